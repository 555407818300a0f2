"""bembed.quickstart_steps: a resumed quickstart with other settings is refused exactly when a step those
settings feed has finished or a training stage they feed has started; a change reaching only steps not yet run
is taken."""

from __future__ import annotations

import pytest

pytest.importorskip("datasets")
pytest.importorskip("mteb")

from bembed import quickstart as qs  # noqa: E402


def test_a_folder_started_with_other_settings_is_refused(tmp_path, monkeypatch, capsys):
    """Finished steps are skipped by their markers: a second run with --pair en-es must not report the en-de
    run's data, tokenizer and scores as its own. A setting that feeds only steps not yet run may change."""
    from bembed.cli import main

    def data_step(settings):
        if settings.pair != "en-de":
            raise AssertionError("the en-es run reached the data step of an en-de folder")
        return {"data_root": str(tmp_path / "datasets"), "counts": {}}

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(qs, "prepare_data", data_step)
    monkeypatch.setattr(qs, "sample_mlm_corpus", stop)
    out = str(tmp_path / "qs")
    assert main(["quickstart", "--out", out, "--no-progress"]) == 130
    assert main(["quickstart", "--out", out, "--no-progress"]) == 130  # the same command resumes
    assert main(["quickstart", "--out", out, "--no-progress", "--pair", "en-es", "--max-items", "50",
                 "--seed", "7"]) == 2
    printed = capsys.readouterr().out
    assert "pair: 'en-de' then, 'en-es' now" in printed and "eval_max_items: 1000 then, 50 now" in printed
    assert "seed: 42 then, 7 now" in printed and "its finished step data used them" in printed
    # --max-items feeds the reference evaluation, which has not run: taken, and recorded for the next start
    assert main(["quickstart", "--out", out, "--no-progress", "--max-items", "50"]) == 130
    assert qs.Markers(out).get("settings")["eval_max_items"] == 50
    assert main(["quickstart", "--out", out, "--no-progress"]) == 130  # 1000 again: nothing used 50 yet


def test_a_stage_that_has_started_keeps_its_settings(tmp_path):
    """A stage with a plan or checkpoints on disk would resume them under another config: refused, naming the
    folder to remove; a later stage's settings may still change."""
    out = tmp_path / "qs"
    settings = qs.Settings(out=out, baselines=[], overrides={"pairs": ["train.lr=1e-4"]})
    markers = qs.Markers(out)
    qs.check_settings(settings, markers)
    from bembed.quickstart_eval import untrained_setup

    for step in ("data", "corpus", "tokenizer", "budget", "pretrain"):
        markers.put(step, {})
    markers.put("references", {"untrained_setup": untrained_setup(settings)})
    (out / "pairs").mkdir()
    (out / "pairs" / "quickstart_plan.json").write_text('{"max_steps": 100}')
    changed = qs.Settings(out=out, baselines=[], overrides={"pairs": ["train.lr=2e-4"]})
    with pytest.raises(qs.SettingsMismatch, match=r"overrides of pairs: \['train.lr=1e-4'\] then, "
                                                  r"\['train.lr=2e-4'\] now\), and its stage pairs has started"):
        qs.check_settings(changed, markers)
    later = qs.Settings(out=out, baselines=[], overrides={"pairs": ["train.lr=1e-4"], "multitask": ["train.lr=1e-5"]})
    qs.check_settings(later, markers)
    assert markers.get("settings")["overrides"]["multitask"] == ["train.lr=1e-5"]
    with pytest.raises(qs.SettingsMismatch, match=r"finished step budget \(and 1 later step\) used them"):
        qs.check_settings(qs.Settings(out=out, baselines=[], minutes=5, overrides=later.overrides), markers)


def test_an_override_the_untrained_reference_was_made_from_is_refused_once_it_ran(tmp_path):
    """The untrained reference takes stage 1's model config and stage 3's length and prompts: a --set of those
    after the reference step would leave its column describing another model than the one trained."""
    from bembed.quickstart_eval import untrained_setup

    out = tmp_path / "qs"
    settings = qs.Settings(out=out, baselines=[])
    markers = qs.Markers(out)
    qs.check_settings(settings, markers)
    for step in ("data", "corpus", "tokenizer"):
        markers.put(step, {})
    markers.put("references", {"untrained_setup": untrained_setup(settings)})
    lr = qs.Settings(out=out, baselines=[], overrides={"pairs": ["train.lr=1e-4"]})
    qs.check_settings(lr, markers)  # stage 2's learning rate: not part of the reference
    markers.put("references", {})  # written before the marker recorded the setup: any such override is refused
    with pytest.raises(qs.SettingsMismatch, match=r"untrained reference's architecture"):
        qs.check_settings(qs.Settings(out=out, baselines=[], overrides={**lr.overrides,
                                                                      "multitask": ["train.lr=1e-5"]}), markers)
    markers.put("references", {"untrained_setup": untrained_setup(settings)})
    shorter = qs.Settings(out=out, baselines=[], overrides={**lr.overrides, "multitask": ["model.max_length=64"]})
    with pytest.raises(qs.SettingsMismatch, match=r"untrained reference's architecture.*finished step references used"):
        qs.check_settings(shorter, markers)


def test_a_folder_started_by_a_bembed_with_other_defaults_says_so(tmp_path):
    """eval_tasks gained "clustering": a folder whose references ran with the old four kinds cannot be resumed,
    and "run the same command" would be the wrong advice, since no option brings the old value back."""
    out = tmp_path / "qs"
    markers = qs.Markers(out)
    old = ("bitext", "sts", "pair_classification", "retrieval")
    qs.check_settings(qs.Settings(out=out, baselines=[], eval_tasks=old), markers)
    markers.put("references", {})
    with pytest.raises(qs.SettingsMismatch, match=r"eval_tasks: .* used them: these are not command-line "
                                                  r"options: it was started by a bembed with other defaults"):
        qs.check_settings(qs.Settings(out=out, baselines=[]), markers)
    with pytest.raises(qs.SettingsMismatch, match=r"used them: run the same command to resume it"):
        qs.check_settings(qs.Settings(out=out, baselines=[], eval_tasks=old, eval_max_items=5), markers)  # an option
