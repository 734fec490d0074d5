"""Bad input, table-driven: each case mutates a copy of one input and runs the CLI.

Every case must end with exit status 2 and exactly one ``bankflow…: error: …`` line on
stderr that names the input (file, and row where there is one) and says what is wrong;
no traceback. Cases cover datasets and configs (``bankflow status``: the pre-flight
checks run before any stage), feature stores (``bankflow store info``), checkpoints
(``bankflow infer --run``) and predictions (``bankflow eval``).

Shared: the session's tiny world, and one trained stage-1 run (the bank tests' fixture);
each case works on copies in its own tmp dir, so the cases are independent and fast.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from flows.cli import main
from tests.stages.test_dump import stage1_outputs

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "tests" / "flows" / "tiny.yaml"


@dataclass
class Inputs:
    """Copies a case may mutate (built lazily: most cases need only the world)."""

    tmp: Path
    world: Path  # a copy of the tiny world
    trained_run: Path  # the published train run to copy from (read-only)
    extract_run: Path

    @property
    def gt(self) -> Path:
        return self.world / "annotations" / "train.csv"

    @property
    def labelmap(self) -> Path:
        return self.world / "annotations" / "action_list.pbtxt"

    @property
    def dataset_yaml(self) -> Path:
        return self.world / "dataset.yaml"

    def config(self, **sections: object) -> Path:
        """The tiny pipeline config on the copied world (``sections`` replace its own)."""
        data = yaml.safe_load(TINY_YAML.read_text())
        data["dataset"] = {"root": str(self.world)}
        data["world"] = None
        data.update(sections)
        path = self.tmp / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def status(self, *overrides: str, config: Path | None = None) -> list[str]:
        cfg = self.config() if config is None else config
        argv = ["status", "--config", str(cfg), "--work-root", str(self.tmp / "work")]
        for o in overrides:
            argv += ["--set", o]
        return argv

    def run_copy(self) -> Path:
        """A copy of the trained run in a work root of its own."""
        out = self.tmp / "work" / "train" / self.trained_run.name
        if not out.exists():
            shutil.copytree(self.trained_run, out)
        return out

    def store_copy(self) -> Path:
        out = self.tmp / "val.zarr"
        if not out.exists():
            shutil.copytree(self.extract_run / "features" / "val.zarr", out)
        return out

    def infer(self, run: Path) -> list[str]:
        video = next((self.world / "videos").glob("*val*"))
        return ["infer", str(video), "--run", str(run), "--out", str(self.tmp / "out")]

    def eval(self, pred: Path, *extra: str) -> list[str]:
        gt = self.world / "annotations" / "val.csv"
        return ["eval", str(gt), str(pred), "--labelmap", str(self.labelmap), *extra]

    def predictions(self) -> Path:
        out = self.tmp / "pred.csv"
        if not out.exists():
            shutil.copy(self.trained_run / "predictions" / "val.csv", out)
        return out


def set_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def first_row(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def gt_row(inp: Inputs, **fields: str) -> str:
    """The GT's first row with some of its fields replaced."""
    names = ["video", "t", "x1", "y1", "x2", "y2", "action", "person"]
    row = dict(zip(names, first_row(inp.gt), strict=True))
    row.update(fields)
    return ",".join(row[n] for n in names)


def edit_dataset_yaml(inp: Inputs, change: Callable[[dict], None]) -> None:
    meta = yaml.safe_load(inp.dataset_yaml.read_text())
    change(meta)
    inp.dataset_yaml.write_text(yaml.safe_dump(meta))


def forge_manifest(run: Path, name: str) -> None:
    """Record the current sha256 of ``name`` (an attacker who also edits COMPLETE.json)."""
    marker = run / "COMPLETE.json"
    record = json.loads(marker.read_text())
    data = (run / name).read_bytes()
    record["manifest"] = [
        [e[0], len(data), hashlib.sha256(data).hexdigest()] if e[0] == name else e
        for e in record["manifest"]
    ]
    marker.write_text(json.dumps(record))


def same_size_change(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- the cases: (id, mutate copies and return (argv, what the line must name), message) ---


def state_of_another_head(run: Path) -> None:
    """A head.pt (re-signed) whose weights are not the ones its head record builds."""
    saved = torch.load(run / "head.pt", weights_only=True)
    saved["state"] = {f"renamed.{k}": v for k, v in saved["state"].items()}
    torch.save(saved, run / "head.pt")
    forge_manifest(run, "head.pt")


def _gt_case(**fields: str):
    def mutate(inp: Inputs):
        set_line(inp.gt, 1, gt_row(inp, **fields))
        return inp.status(), f"{inp.gt}:1:"

    return mutate


def _dataset_yaml_case(change: Callable[[dict], None], named: Callable[[Inputs], Path]):
    def mutate(inp: Inputs):
        edit_dataset_yaml(inp, change)
        return inp.status(), str(named(inp))

    return mutate


def _labelmap_case(text_change: Callable[[str], str]):
    def mutate(inp: Inputs):
        inp.labelmap.write_text(text_change(inp.labelmap.read_text()))
        return inp.status(), str(inp.labelmap)

    return mutate


def _labelmap_typo_in_data_check(inp: Inputs):
    """``label_id: 4`` typed as 3: ``data check`` names the duplicate's row and the lost id
    once (it used to add the lost id once per CSV file and list, four lines)."""
    lines = inp.labelmap.read_text().splitlines()
    row = lines.index("  label_id: 4") + 1
    set_line(inp.labelmap, row, "  label_id: 3")
    return ["data", "check", str(inp.world)], f"{inp.labelmap}:{row}"


def _status_case(*overrides: str, named: Callable[[Inputs], str]):
    def mutate(inp: Inputs):
        return inp.status(*overrides), named(inp)

    return mutate


def _pipeline_run_case(*overrides: str, named: Callable[[Inputs], str]):
    """As :func:`_status_case`, through ``bankflow run``: it checks ``head_kwargs`` against
    the heads before Prefect starts (``status`` reads a config without importing them)."""

    def mutate(inp: Inputs):
        return ["run", *inp.status(*overrides)[1:]], named(inp)

    return mutate


def _config_text_case(text: str):
    def mutate(inp: Inputs):
        cfg = inp.tmp / "pipeline.yaml"
        cfg.write_text(text)
        return inp.status(config=cfg), str(cfg)

    return mutate


def _run_case(change: Callable[[Path], None], name: str = "head.pt"):
    def mutate(inp: Inputs):
        run = inp.run_copy()
        change(run)
        return inp.infer(run), str(run / name) if name else str(run)

    return mutate


def _store_case(change: Callable[[Path], None]):
    def mutate(inp: Inputs):
        store = inp.store_copy()
        change(store)
        return ["store", "info", str(store)], str(store)

    return mutate


def _pred_case(line: str | None = None, *extra: str, missing: bool = False):
    def mutate(inp: Inputs):
        pred = inp.predictions()
        if missing:
            pred = inp.tmp / "nope.csv"
        elif line is not None:
            set_line(pred, 2, line)
        return inp.eval(pred, *extra), f"{pred}:2:" if line else str(pred)

    return mutate


def _missing_excluded(inp: Inputs):
    pred = inp.predictions()
    nope = inp.tmp / "excluded_nope.csv"
    return inp.eval(pred, "--excluded", str(nope)), str(nope)


def _split_file(split_field: str, name: str = "nope.csv"):
    return lambda m: m["splits"]["train"].update({split_field: name})


def _nope(inp: Inputs) -> Path:
    return inp.world / "annotations" / "nope.csv"


def _bad_row_in(filename: str, row: str):
    def mutate(inp: Inputs):
        path = inp.world / "annotations" / filename
        set_line(path, 1, row)
        return inp.status(), f"{path}:1:"

    return mutate


def _new_world_path(inp: Inputs, rel: str) -> str:
    return str(inp.world / rel)


CASES: list[tuple[str, Callable[[Inputs], tuple[list[str], str]], str]] = [
    # datasets: GT rows
    ("gt-columns", lambda i: (set_line(i.gt, 1, "w0_train_00,0902,0.1"), i.status(), f"{i.gt}:1:")[1:],
     r"expected 7 or 8 columns"),
    ("gt-box-outside", _gt_case(x2="1.5"), r"is outside \[0, 1\]"),
    ("gt-box-swapped", _gt_case(x1="0.5", x2="0.2"), r"x2 <= x1"),
    ("gt-box-nan", _gt_case(y1="nan"), r"NaN or infinite"),
    ("gt-timestamp-text", _gt_case(t="09x2"), r"timestamp '09x2' is not an integer"),
    ("gt-timestamp-negative", _gt_case(t="-3"), r"timestamp -3 is negative"),
    ("gt-action-unknown", _gt_case(action="99"), r"action id 99 is not in the label map"),
    ("gt-action-empty", _gt_case(action=""), r"action id is empty"),
    ("gt-video-escapes", _gt_case(video="../x"), r"video id '\.\./x' contains '\.\.'"),
    ("gt-video-hidden", _gt_case(video=".x"), r"video id '\.x' starts with a dot"),
    ("gt-video-separator", _gt_case(video="a/b"), r"video id 'a/b' contains a path separator"),
    ("gt-video-no-file", _gt_case(video="ghost"), r"video 'ghost' has no file"),
    ("gt-empty", lambda i: (i.gt.write_text(""), i.status(), str(i.gt))[1:], r"empty file"),
    # datasets: other files
    ("labelmap-duplicate-id", _labelmap_case(lambda t: t.replace("label_id: 4\n", "label_id: 3\n", 1)),
     r"duplicate label_id 3"),
    ("labelmap-duplicate-id-check", _labelmap_typo_in_data_check,
     r"duplicate label_id 3 \(first given on line \d+\); id 4, .* is missing \(\d+ CSV row\(s\) use it"),
    ("labelmap-syntax", _labelmap_case(lambda t: "labl {\n" + t), r"unknown block 'labl'"),
    ("labelmap-missing", _dataset_yaml_case(lambda m: m.update(labelmap="nope.pbtxt"),
                                            lambda i: i.world / "annotations" / "nope.pbtxt"),
     r"file named by dataset.labelmap does not exist"),
    ("excluded-named-missing", _dataset_yaml_case(_split_file("excluded"), _nope),
     r"file named by dataset.splits.train.excluded does not exist"),
    ("proposals-named-missing", _dataset_yaml_case(_split_file("proposals"), _nope),
     r"file named by dataset.splits.train.proposals does not exist"),
    ("gt-named-missing", _dataset_yaml_case(_split_file("gt"), _nope),
     r"file named by dataset.splits.train.gt does not exist"),
    ("excluded-bad-row", _bad_row_in("excluded_timestamps_train.csv", "w0_train_00,abc"),
     r"timestamp 'abc' is not an integer"),
    ("proposals-bad-box", _bad_row_in("person_boxes_train.csv", "w0_train_00,0902,0.1,0.1,0.9,7,,0.9"),
     r"is outside \[0, 1\]"),
    ("proposals-bad-score", _bad_row_in("person_boxes_train.csv", "w0_train_00,0902,0.1,0.1,0.5,0.5,,high"),
     r"score 'high' is not a number"),
    ("dataset-yaml-invalid", lambda i: (i.dataset_yaml.write_text("splits: [\n"), i.status(),
                                        str(i.dataset_yaml))[1:], r"invalid YAML"),
    ("dataset-yaml-unknown-key", _dataset_yaml_case(lambda m: m.update(vidoes_dir="v"),
                                                    lambda i: i.dataset_yaml),
     r"invalid dataset config: vidoes_dir"),
    ("dataset-root-missing", _status_case("dataset.root=/nonexistent/ds", named=lambda i: "/nonexistent/ds"),
     r"dataset directory does not exist"),
    # configs
    ("config-missing", lambda i: (i.status(config=i.tmp / "nope.yaml"), str(i.tmp / "nope.yaml")),
     r"config file not found"),
    ("config-invalid-yaml", _config_text_case("train: {runs: [\n"), r"not valid YAML"),
    ("config-python-tag", _config_text_case("name: !!python/object/apply:os.system ['touch x']\n"),
     r"not valid YAML"),
    ("config-unknown-section", lambda i: (i.status(config=i.config(trian={})), str(i.tmp / "pipeline.yaml")),
     r"invalid config: trian"),
    ("config-bad-value", _status_case("train.runs.linear.optim.epochs=many",
                                      named=lambda i: str(i.tmp / "pipeline.yaml")),
     r"invalid config: train.runs.linear.optim.epochs"),
    ("config-unknown-recipe", _status_case("train.runs.linear.recipe=acarr",
                                           named=lambda i: str(i.tmp / "pipeline.yaml")),
     r"invalid config: train.runs.linear: unknown recipe 'acarr'; expected one of paper, acar"),
    ("config-head-kwargs-typo", _pipeline_run_case("train.runs.linear.head_kwargs={dropuot: 0.1}",
                                                   named=lambda i: "train.runs.linear"),
     r"invalid config: train.runs.linear: head_kwargs: head 'linear' takes no 'dropuot' \(it takes dropout\)"),
    ("set-without-equals", _status_case("train.runs.linear", named=lambda i: "train.runs.linear"),
     r"expected section.key=value"),
    ("set-run-typo", _status_case("train.runs.linaer.optim.epochs=2",
                                  named=lambda i: "train.runs.linaer.optim.epochs=2"),
     r"not a run of the config \(its train.runs: linear\); a new one must set train.runs.linaer.head"),
    ("set-bank-without-from", _status_case("dump.banks.lfb.kind=lfb", named=lambda i: "dump.banks.lfb"),
     r"a new one must set dump.banks.lfb.from"),
    ("run-name-escapes", _status_case("train.runs={../x: {head: linear}}",
                                      named=lambda i: str(i.tmp / "pipeline.yaml")),
     r"train.runs.../x: name '\.\./x' contains '\.\.'"),
    ("split-name-separator", _status_case("detect.splits=[a/b]", named=lambda i: "detect.splits"),
     r"name 'a/b' contains a path separator"),
    ("split-unknown", _status_case("detect.splits=[test]", named=lambda i: "'test'"),
     r"no such split"),
    ("proposals-override-missing", _status_case("detect.proposals.train=/nonexistent/p.csv",
                                                named=lambda i: "/nonexistent/p.csv"),
     r"file named by detect.proposals.train does not exist"),
    ("weights-missing", _status_case("extract.weights=/nonexistent/w.pt", named=lambda i: "/nonexistent/w.pt"),
     r"file named by extract.weights does not exist"),
    # feature stores
    ("store-missing", lambda i: (["store", "info", str(i.tmp / "no.zarr")], str(i.tmp / "no.zarr")),
     r"is not a bankflow feature store"),
    ("store-zarr-json-truncated", _store_case(lambda s: (s / "zarr.json").write_text('{"zarr_format": 3,')),
     r"zarr.json is not valid JSON"),
    ("store-not-bankflow", _store_case(lambda s: (s / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))),
     r"is not a bankflow feature store"),
    # checkpoints (trained heads) and what is published beside them
    ("head-same-size-change", _run_case(lambda r: same_size_change(r / "head.pt")),
     r"sha256 .* differs .* changed afterwards"),
    ("head-not-tensor-file", _run_case(lambda r: ((r / "head.pt").write_bytes(b"\x80\x04garbage"),
                                                  forge_manifest(r, "head.pt"))),
     r"not a plain tensor file; refusing to load it"),
    ("head-state-does-not-fit", _run_case(state_of_another_head),
     r"does not fit a 'linear' head \(missing \['classifier.weight'"),
    ("head-missing", _run_case(lambda r: (r / "head.pt").unlink(), name=""), r"train run without head.pt"),
    ("provenance-changed", _run_case(lambda r: (r / "provenance.json").write_text(
        (r / "provenance.json").read_text().replace('"train"', '"trian"', 1)), name="provenance.json"),
     r"sha256 .* differs"),
    ("manifest-without-sha256", _run_case(lambda r: (r / "COMPLETE.json").write_text(json.dumps(
        {**json.loads((r / "COMPLETE.json").read_text()),
         "manifest": [e[:2] for e in json.loads((r / "COMPLETE.json").read_text())["manifest"]]})),
        name="provenance.json"),
     r"published without checksums .* --force"),
    ("run-not-an-output", _run_case(lambda r: (r / "COMPLETE.json").unlink(), name=""),
     r"not a complete stage output"),
    # predictions
    ("pred-missing", _pred_case(missing=True), r"predictions file not found"),
    ("pred-score-text", _pred_case("w0_val_00,0902,0.1,0.1,0.5,0.5,1,high"), r"score 'high' is not a number"),
    ("pred-columns", _pred_case("w0_val_00,0902,0.1"), r"expected 8 \(like the first row\) columns"),
    ("pred-excluded-missing", _missing_excluded, r"excluded-timestamps file not found"),
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory):
    return stage1_outputs(tiny_world, tmp_path_factory)


@pytest.mark.parametrize(("case_id", "mutate", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(
    case_id: str, mutate, message: str, tiny_world: Path, trained, tmp_path: Path, capsys
) -> None:
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    inp = Inputs(tmp=tmp_path, world=world, trained_run=trained.linear.path,
                 extract_run=trained.extract.path)  # fmt: skip
    argv, named = mutate(inp)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, f"{case_id}: exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(errors) == 1, f"{case_id}: expected one error line, got:\n{err}"
    assert re.search(message, errors[0]), f"{case_id}: {errors[0]!r} !~ {message!r}"
    assert named in errors[0], f"{case_id}: {errors[0]!r} does not name {named!r}"


def test_the_table_is_broad() -> None:
    assert len(CASES) >= 30
    kinds = {c[0].split("-")[0] for c in CASES}
    assert {"gt", "labelmap", "config", "store", "head", "pred"} <= kinds
