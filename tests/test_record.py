"""helpers/record.py: a run read back, its plain and TTA accuracies kept apart."""
from conftest import SMALL
from helpers.run import train


def test_history_and_record_keep_plain_and_tta_apart(tmp_path):
    record = train(out_dir=tmp_path / "run", **dict(SMALL, recipe="fast", tta=1))
    last = record.history[-1]
    assert {"test_acc", "tta_acc", "test_loss", "tta_loss"} <= set(last)
    assert record.final_acc == last["test_acc"] and record.final_tta_acc == last["tta_acc"]
    table = record.table()
    assert "TTA acc" in table and "final test accuracy (plain, single view)" in table
    assert train(**dict(SMALL, epochs=1)).final_tta_acc is None  # seed has no TTA
