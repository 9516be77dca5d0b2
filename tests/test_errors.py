"""Every mistake a user fixes is a UserError (helpers/errors.py): one line in a notebook, `error: ...` and
exit 2 on the command line. These are the ones raised outside the modules that define a subclass of their own."""
import pytest
import torch
import torch.nn as nn

from helpers import device as D
from helpers import plots
from helpers.errors import UserError
from helpers.loop import NonFiniteLossError
from helpers.registry import build_model


def test_a_user_error_shows_as_one_line_in_a_notebook():
    assert UserError("use precision 'auto'")._render_traceback_() == ["UserError: use precision 'auto'"]


@pytest.mark.parametrize("mistake", [
    lambda: D.pick_device("gpu", log=None),
    lambda: D.resolve_precision("bf16", torch.device("mps")),
    lambda: build_model("fast", act="swish"),
    lambda: plots.summary_plot_for_runs([], metric="accuracy"),
    lambda: plots.gradcam_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))),
])
def test_user_mistakes_outside_the_error_subclasses_are_user_errors(mistake):
    with pytest.raises(UserError):
        mistake()


def test_a_diverged_run_is_a_user_error_that_runtime_error_handlers_still_catch():
    """Its fix is a setting (a lower lr, fp32): a UserError; still a RuntimeError for code that caught it as one."""
    assert issubclass(NonFiniteLossError, UserError) and issubclass(NonFiniteLossError, RuntimeError)
