"""The meta-val curve table from CSVLogger files: validation rows only, steps counted from 1, runs side by side."""

from __future__ import annotations

import json

import pytest

from benchmarks import meta_val_curve

CSV = """epoch,step,train/outer_loss,val/loss_post,val/loss_pre,val/wer_post,val/wer_pre
0,9,2.5,,,,
0,99,,0.4,0.5,0.25,0.3
0,149,1.0,,,,
1,199,,0.3,0.35,0.2,0.21
"""


def test_validation_rows_become_a_curve_and_runs_share_one_table(tmp_path, capsys) -> None:
    (tmp_path / "a.csv").write_text(CSV)
    (tmp_path / "b.csv").write_text(CSV.replace("0,99,,0.4,0.5,0.25,0.3\n", ""))
    assert meta_val_curve.main([f"fomaml={tmp_path / 'a.csv'}", f"joint={tmp_path / 'b.csv'}", "--output", str(tmp_path / "out")]) == 0
    curves = json.loads((tmp_path / "out" / "meta_val_curve.json").read_text())
    assert [p["step"] for p in curves["fomaml"]] == [100, 200] and [p["step"] for p in curves["joint"]] == [200]
    assert curves["fomaml"][0] == {"step": 100, "val/wer_pre": 0.3, "val/wer_post": 0.25, "val/loss_pre": 0.5, "val/loss_post": 0.4}
    table = capsys.readouterr().out.splitlines()
    assert table[2] == "| 100 | 30.0 -> 25.0 | - |" and table[3] == "| 200 | 21.0 -> 20.0 | 21.0 -> 20.0 |"


def test_a_missing_file_names_the_argument(tmp_path) -> None:
    with pytest.raises(SystemExit, match="fomaml=nowhere.csv"):
        meta_val_curve.main(["fomaml=nowhere.csv", "--output", str(tmp_path)])
