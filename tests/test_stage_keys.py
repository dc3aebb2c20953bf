"""Stage keys come from what each stage declares it reads (pipeline.STAGE_READS): editing a
template redoes exactly the stages that read it and those whose input files then change."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from selfalign.config import Config
from selfalign.manifest import fingerprint
from selfalign.pipeline import run_pipeline
from selfalign.reads import NOT_READ_BY_STAGES, STAGE_READS


def _flat(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_every_config_key_is_read_by_a_stage_or_said_not_to_be() -> None:
    declared = {k for r in STAGE_READS.values() for k in r.config}
    unaccounted = [k for k in _flat(Config().to_dict())
                   if not any(k == d or k.startswith(d + ".") for d in declared)
                   and not k.startswith(NOT_READ_BY_STAGES)]
    assert unaccounted == []
    both = [k for k in declared if k.startswith(NOT_READ_BY_STAGES)]
    assert both == []


def _artifacts(run_dir: Path) -> dict[str, str]:
    return {a: fingerprint(run_dir / a.format(i=1)) for r in STAGE_READS.values() for a in r.artifacts}


def _edit_json_section(folder: Path, section: str) -> None:
    f = folder / "templates.json"
    data = json.loads(f.read_text())
    key = "user" if "user" in data[section] else "assistant_prefix"
    data[section][key] = "Please. " + data[section][key]
    f.write_text(json.dumps(data, indent=1))


EDITS = {
    "templates.json:backward": lambda d: _edit_json_section(d, "backward"),
    "templates.json:forward": lambda d: _edit_json_section(d, "forward"),
    "templates.json:plain": lambda d: _edit_json_section(d, "plain"),
    "rating_prompt.txt": lambda d: (d / "rating_prompt.txt").write_text(
        (d / "rating_prompt.txt").read_text() + "\nBe strict.\n"),
    "request_words.json": lambda d: (d / "request_words.json").write_text(json.dumps(
        {**json.loads((d / "request_words.json").read_text()), "words": ["what", "how"]})),
    "rating_fewshot.json": lambda d: (d / "rating_fewshot.json").write_text(
        json.dumps(list(reversed(json.loads((d / "rating_fewshot.json").read_text()))))),
}


@pytest.mark.slow  # > 8 s (the fast tier stays under 3 min; CI runs it)
def test_editing_a_template_redoes_exactly_its_dependent_stages(smoke_cfg, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(Path(str(resources.files("selfalign").joinpath("templates"))), templates)
    cfg = smoke_cfg.model_copy(deep=True)
    cfg.run.templates_dir = str(templates)
    cfg.data.seed_limit, cfg.data.unlabelled_n = 8, 6
    first = run_pipeline(cfg, until="train-forward")
    stages = list(first.ran)
    assert stages == ["seed", "hygiene-seed", "sample", "train-backward", "augment", "hygiene-augmented", "curate-1",
                      "train-forward-1"]
    assert run_pipeline(cfg, until="train-forward").ran == []  # nothing changed: nothing redone

    for ref, edit in EDITS.items():
        before = _artifacts(first.dir)
        edit(templates)
        ran = run_pipeline(cfg, until="train-forward").ran
        after = _artifacts(first.dir)
        changed = {a for a in before if before[a] != after[a]}
        expected = [s for s in stages
                    if ref in STAGE_READS[s.removesuffix("-1")].templates
                    or changed & {a for a in STAGE_READS[s.removesuffix("-1")].artifacts}]
        assert ran == expected, ref
        assert ran, ref  # every template is read by some stage


@pytest.mark.parametrize("ref", sorted({t for r in STAGE_READS.values() for t in r.templates}))
def test_every_declared_template_exists(ref: str) -> None:
    from selfalign.prompts import shipped

    assert len(shipped().fingerprint(ref)) == 16
