import yaml

from infopt import cli


def write_profile(path, cache_dir):
    args = {"profile": "x", "cache_dir": str(cache_dir),
            "scout": {"model": "smollm2-135m-instruct"}, "validator": {"model": "Qwen/Qwen2.5-7B-Instruct"}}
    path.write_text(yaml.safe_dump({"applications": [{"import_path": "deployments.app:build_app", "args": args}]}))
    return path


def test_prepare_uses_the_cache_dir_the_profile_serves_from(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("infopt.prepare.prepare_model", lambda name, cache: calls.append((name, cache)))
    monkeypatch.delenv("INFOPT_CACHE_DIR", raising=False)
    profile = write_profile(tmp_path / "p.yaml", tmp_path / "from-yaml")
    assert cli.main(["models", "prepare", "--profile", str(profile)]) == 0
    assert calls == [("smollm2-135m-instruct", tmp_path / "from-yaml")]
    assert "Qwen/Qwen2.5-7B-Instruct: not in the catalog" in capsys.readouterr().out
    calls.clear()
    assert cli.main(["--cache-dir", str(tmp_path / "cli"), "models", "prepare", "--profile", str(profile)]) == 0
    assert calls == [("smollm2-135m-instruct", tmp_path / "cli")]


def test_prepare_needs_something_to_prepare():
    assert cli.main(["models", "prepare"]) == 2


def test_collect_only_ids_answers_just_those_prompts_in_their_drawn_order(tmp_path, monkeypatch):
    """`--only-ids` re-creates the hand-labelled pairs without answering the whole split again."""
    import json

    import pytest

    from infopt import calibration_data as cd

    if not cd.DEFAULT_DATA_DIR.exists():
        pytest.skip("../shared/data is absent")
    drawn = cd.prompts(n=40, split="calibration")
    picked = [drawn[7]["id"], drawn[3]["id"]]
    ids = tmp_path / "ids.jsonl"
    ids.write_text("".join(json.dumps({"id": i, "label": "agree"}) + "\n" for i in picked))
    seen = {}

    def fake_collect(profile, records, out, **kw):
        seen["ids"] = [r["id"] for r in records]
        return {"rows": len(records)}

    monkeypatch.setattr(cd, "collect", fake_collect)
    assert cli.main(["calibrate", "collect", "--n", "40", "--only-ids", str(ids), "--out",
                     str(tmp_path / "o.jsonl")]) == 0
    assert seen["ids"] == [drawn[3]["id"], drawn[7]["id"]]  # the collection's order, not the file's
