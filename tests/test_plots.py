"""helpers/plots.py: figures that show their values, the classes, both accuracies apart, Grad-CAM where it says."""
import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from helpers import plots  # noqa: E402
from helpers.schedule import lr_schedule  # noqa: E402
from helpers.record import Record  # noqa: E402
from helpers.data import channel_stats, load_split  # noqa: E402
from helpers.recipes import get_recipe  # noqa: E402
from helpers.registry import build_model  # noqa: E402


def test_per_class_bars_carry_their_values():
    cm = torch.tensor([[8, 2], [1, 9]])
    fig = plots.plot_per_class_accuracy(cm, ["cat", "dog"])
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    assert labels == ["80.0", "90.0"]


def test_the_augmentation_figure_shows_one_image_of_each_class_as_training_sees_it():
    ds = load_split("synthetic", "train", limit=200)
    fig = plots.show_augmentations(ds, get_recipe("fast", cutout=8), n=8, epochs=2)
    top = [ax.get_title() for ax in fig.axes[:8]]
    assert top == ds.classes[:8]  # not eight images of the first class
    assert [ax.get_title() for ax in fig.axes[8:24:8]] == ["epoch 1", "epoch 2"]
    # the recipe's own augmentation: cutout paints a square of the mean colour into every image
    shown = [ax.images[0].get_array() for ax in fig.axes[8:16]]
    originals = [ax.images[0].get_array() for ax in fig.axes[:8]]
    assert all((a != b).any() for a, b in zip(shown, originals))


def test_alternating_flips_mirror_each_image_every_other_epoch():
    ds = load_split("synthetic", "train", limit=200)
    recipe = get_recipe("fast", translate=0)  # mirroring alone: epochs 1 and 2 are each other's mirror
    fig = plots.show_augmentations(ds, recipe, n=4, epochs=2)
    one, two = ([ax.images[0].get_array() for ax in fig.axes[k:k + 4]] for k in (4, 8))
    assert all((a[:, ::-1] == b).all() for a, b in zip(one, two))


@pytest.mark.parametrize("changes, side", [(dict(cutout=8), 8), (dict(erase=1.0), 31)])
def test_the_augmentation_figure_blanks_what_the_recipes_cutout_or_erasing_blanks(changes, side):
    """The figure draws from the recipe's own list of augmentations: with cutout or random erasing alone,
    each image shown has changed in one box (at most side x side), painted the dataset's mean colour."""
    import numpy as np

    ds = load_split("synthetic", "train", limit=200)
    fig = plots.show_augmentations(ds, get_recipe("seed", translate=0, flip=False, **changes), n=4, epochs=2)
    mean = (torch.tensor(channel_stats(ds.images)[0]) * 255).round()
    pixels = [torch.from_numpy(np.asarray(ax.images[0].get_array())) for ax in fig.axes[:12]]  # (H, W, 3) each
    for k, shown in enumerate(pixels[4:]):
        changed = (shown != pixels[k % 4]).any(-1)
        assert changed.any(), k
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        box = (shown == mean).all(-1)[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and max(box.shape) <= side, k


@pytest.mark.parametrize("name, layer, size", [("seed", "block3", (8, 8)), ("fast", "block3", (7, 7)),
                                               ("air", "block3", (7, 7)), ("mynet.py:MyNet", "block3", (8, 8))])
def test_grad_cam_looks_at_the_last_conv_block_with_maps_of_7px_or_more(name, layer, size):
    model = build_model(name)
    found, module, hw = plots.gradcam_layer(model)
    assert (found, hw) == (layer, size) and module is dict(model.named_modules())[layer]


def test_grad_cam_finds_a_students_block_whatever_it_is_called():
    """Blocks read from the graph: an nn.Sequential attribute named convblock3, no helpers class in sight."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "student_nets" / "sequential_blocks.py"
    spec = importlib.util.spec_from_file_location("sequential_blocks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found, _, hw = plots.gradcam_layer(module.Net())
    assert found == "convblock3" and hw == (8, 8)


def test_grad_cam_shows_each_image_beside_its_map():
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    fig = plots.show_grad_cam(images, torch.rand(3, 32, 32), ["a → b", "c → d", "e → f"], ncols=3)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 6 and [len(ax.images) for ax in shown] == [1, 2] * 3  # image, then image + heat map
    assert [ax.get_title() for ax in shown[:2]] == ["a → b", "Grad-CAM"]


def test_the_schedule_figure_draws_every_step():
    schedule = lr_schedule(get_recipe("best"), steps_per_epoch=5)
    fig = plots.plot_schedule(schedule)
    lr_ax, momentum_ax = fig.axes
    assert len(lr_ax.lines) == 2 and len(lr_ax.lines[0].get_xdata()) == 50  # both groups (x64 apart)
    assert list(momentum_ax.lines[0].get_ydata()) == schedule["momentum"]


def test_curves_label_plain_and_tta_apart():
    history = [dict(epoch=e, train_acc=0.5, test_acc=0.6, tta_acc=0.62, train_loss=1.0, test_loss=1.1)
               for e in (1, 2)]
    record = Record("r", dict(recipe=get_recipe("fast").to_dict(), seed=0), history)
    labels = [t.get_text() for t in plots.plot_curves(record).axes[0].get_legend().get_texts()]
    assert labels == ["train", "test (plain)", "test with TTA", "80 % target"]
    held_out = Record("r", record.config, [dict(h, val_acc=0.58) for h in history])   # a run with val=
    fig = plots.plot_curves(held_out)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["train", "test (plain)", "test with TTA", "validation (plain)", "80 % target"]
    assert list(fig.axes[0].lines[3].get_ydata()) == pytest.approx([58.0, 58.0])


class OnDevice(torch.Tensor):
    """Stands in for a CUDA or MPS tensor on a CPU machine: numpy(), and np.asarray (what matplotlib calls on
    a tensor it is given), fail until .cpu() brings it to the host, as they do for a real accelerator tensor;
    .tolist() and .item() copy to the host and work, as they do there."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() first")
        if func is torch.Tensor.cpu:
            return args[0].as_subclass(torch.Tensor).clone()
        return super().__torch_function__(func, types, args, kwargs or {})


def test_figures_take_tensors_from_an_accelerator():
    cm = torch.tensor([[8, 2], [1, 9]]).as_subclass(OnDevice)
    for to_host in (lambda t: t.numpy(), np.asarray):  # the stand-in behaves like a GPU tensor
        with pytest.raises(TypeError, match="Use Tensor.cpu"):
            to_host(cm)
    plots.plot_confusion(cm, ["cat", "dog"])
    plots.plot_per_class_accuracy(cm, ["cat", "dog"])
    images = torch.rand(2, 3, 8, 8).as_subclass(OnDevice)
    cams = torch.rand(2, 8, 8).as_subclass(OnDevice)
    plots.show_grad_cam(images, cams, ["a", "b"], ncols=2)


def record(recipe="fast", seed=3, epochs=1, name="run"):
    r = get_recipe(recipe, epochs=epochs).to_dict()
    history = [dict(epoch=e, train_acc=0.5, test_acc=0.4 + e / 100, train_loss=1.0, test_loss=1.2)
               for e in range(1, epochs + 1)]
    return Record(name, dict(recipe=r, seed=seed), history)


def test_runs_are_labelled_by_recipe_and_seed():
    fig = plots.plot_curves(record())
    assert fig.axes[0].get_title() == "fast (epochs=1), seed 3: accuracy"
    fig = plots.summary_plot_for_runs([record(), record("long", 0, 40, name="other")])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["fast (epochs=1), seed 3", "long, seed 0"]


@pytest.mark.parametrize("epochs", [1, 3, 40])
def test_epoch_ticks_are_whole_numbers(epochs):
    fig = plots.plot_curves(record(epochs=epochs))
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if fig.axes[0].get_xlim()[0] <= t <= fig.axes[0].get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
