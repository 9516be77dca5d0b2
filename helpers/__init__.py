"""Small constrained CNN for CIFAR-10: model, constraints checker, data, training, plots.

Notebooks use one import line: `import helpers as H`.
"""
from . import plots
from .constraints import check
from .data import Loader, channel_stats, load_split, load_splits
from .model import build_model, count_params, list_models, params_per_block
from .notebook import check_params, drive_folder, in_colab, summary, warn_if_no_gpu
from .recipes import RECIPES, Recipe, get_recipe
from .train import Record, Trainer, Trial, evaluate, load_run, pick_device, predict, select_examples, test_loader_for, train

# The GitHub repository the Colab badges and setup cells point at (owner/name).
# Change it here, then run `python -m helpers.pipeline --set-repo` to rewrite the notebooks.
REPO = "small-cnn-team/cifar10-small-cnn"
