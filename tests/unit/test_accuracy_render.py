"""benchmarks/accuracy.py's rendering, on small synthetic records (no benchmark runs here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"
_spec = importlib.util.spec_from_file_location("accuracy_benchmark", _PATH)
assert _spec and _spec.loader
acc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(acc)

README = """# proj

intro

Headline figures: old text.

| method | what it does | fmnist-resnet, headline setting | page |
|---|---|---|---|
| `nearest` | old | W4A8 1.00 | `docs/nearest.md` |

Bundled offline models: after the table.
"""


def record(section: str, mode: str, accuracy: float, n: int = 3, **extra) -> dict:
    runs = [{"command": f"python -m lowbit eval --method {section} --seed {s} --json", "seconds": 10.0,
             "load_avg": 1.0 + s, "cpu_seconds": 4.0, "output": {}} for s in range(n)]
    return {
        "section": section, "mode": mode, "date": "2026-12-06 12:00 UTC", "commit": "abc1234", "torch": "2.13.0",
        "python": "3.11.7", "machine": "Test CPU, 2 CPUs", "load_avg_start": 1.5, "wall_seconds": 30.0,
        "tables": [{"title": "fmnist-resnet", "settings": "quick task", "columns": ["setting", "accuracy %"],
                    "rows": [["W4A8", {"mean": accuracy, "std": 0.123, "n": n}]], "note": "a note", "runs": runs}],
        "headline": [{"method": section, "label": "W4A8", "value": {"mean": accuracy, "std": 0.123, "n": n}}],
        "points": [{"panel": "weights", "series": section, "bits": 4, "accuracy": {"mean": accuracy, "std": 0.1, "n": n}}],
        **extra,
    }


def store(root: Path, rec: dict) -> None:
    path = root / rec["mode"] / f"{rec['section']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_cells_format_mean_std_and_single_seeds():
    assert acc.fmt({"mean": 90.8412, "std": 0.1149, "n": 3}) == "90.84 +- 0.11"
    assert acc.fmt({"mean": 90.8462, "std": 0.0, "n": 1}) == "90.85"
    assert acc.fmt({"mean": 12.34, "std": 0.06, "n": 3}, digits=1) == "12.3 +- 0.1"
    assert acc.fmt(None) == "-"
    assert acc.fmt(91872) == "91872"
    assert acc.fmt(3.14159) == "3.14"
    assert acc.fmt("W2A32") == "W2A32"
    assert acc.stat([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert acc.stat([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    assert acc.fmt(acc.stat([])) == "-"


def test_full_results_are_preferred_to_quick_ones(tmp_path):
    store(tmp_path, record("nearest", "quick", 80.0))
    store(tmp_path, record("nearest", "full", 90.0))
    store(tmp_path, record("adaround", "quick", 70.0))
    got = acc.load_records(tmp_path)
    assert got["nearest"]["mode"] == "full" and got["adaround"]["mode"] == "quick"
    assert "clado" not in got


def test_commands_differing_only_in_seed_are_shown_once():
    runs = [{"command": f"python x.py --seed {s} --json"} for s in (0, 1, 2)] + [{"command": "python y.py --json"}]
    assert acc.commands(runs) == ["python x.py --seed {0,1,2} --json", "python y.py --json"]
    assert acc.commands(runs[:1]) == ["python x.py --seed 0 --json"]


def test_page_shows_tables_commands_labels_and_missing_sections():
    records = {"nearest": record("nearest", "full", 90.8412), "adaround": record("adaround", "quick", 70.0, n=1)}
    page = acc.render_page(records, ["accuracy_vs_bits.png"])
    assert "## Round to nearest (`nearest`) (full settings)" in page
    assert "## AdaRound (`adaround`) (quick settings)" in page
    assert "| W4A8 | 90.84 +- 0.12 |" in page
    assert "| W4A8 | 70.00 |" in page
    assert "    python -m lowbit eval --method nearest --seed {0,1,2} --json" in page
    assert "Wall time 30 s over 3 command(s) (12 CPU s), load average 1.0-3.0" in page
    assert "commit abc1234" in page and "a note" in page
    assert "Not measured yet: `python benchmarks/accuracy.py --only clado`" in page
    assert "--only kernels` (full mode only)" in page
    assert "![accuracy_vs_bits.png](results/accuracy_vs_bits.png)" in page
    # the contents table links each measured section to its heading
    assert "| [nearest](#round-to-nearest-nearest-full-settings) | full (2026-12-06 12:00 UTC) | 30 |" in page
    assert "| [clado](#clado-mixed-precision-clado) | not measured | - |" in page
    assert "The full sections shown took 30 s" in page and "The quick sections shown took 30 s" in page


def test_readme_block_is_inserted_then_replaced_in_place():
    records = {"nearest": record("nearest", "quick", 90.8412, fp=91.5)}
    once = acc.replace_block(README, acc.readme_block(records))
    assert once.startswith("# proj\n\nintro\n\n" + acc.BEGIN)
    assert "Headline figures: old text." not in once and "| old |" not in once
    assert "| `nearest` | round to nearest" in once and "W4A8 90.84 +- 0.12 (quick settings) |" in once
    assert "FP32 91.50 on the quick task's 2000 test images" in once
    assert "| `clado` | " in once and "not measured yet" in once
    assert once.endswith(acc.END + "\n\nBundled offline models: after the table.\n")
    records["nearest"] = record("nearest", "full", 91.0)
    twice = acc.replace_block(once, acc.readme_block(records))
    assert twice.count(acc.BEGIN) == 1 and "W4A8 91.00 +- 0.12 |" in twice and "quick settings" not in twice
    assert twice.endswith("Bundled offline models: after the table.\n")


def test_render_writes_page_and_readme_from_stored_files_only(tmp_path):
    store(tmp_path / "results", record("nearest", "quick", 88.0, fp=91.0))
    page, readme = tmp_path / "results.md", tmp_path / "README.md"
    readme.write_text(README)
    records = acc.render(tmp_path / "results", page, readme)
    assert set(records) == {"nearest"}
    assert "| W4A8 | 88.00 +- 0.12 |" in page.read_text()
    assert "W4A8 88.00 +- 0.12 (quick settings)" in readme.read_text()


def test_table_seconds_get_one_decimal_and_one_seed_is_tagged_in_the_readme():
    lines = acc.markdown_table(["setting", "accuracy %", "quantization s", "AdaRound s per run"],
                               [["W2", {"mean": 90.0, "std": 0.0, "n": 1}, 12.345, {"mean": 7.66, "std": 0.0, "n": 1}]])
    assert lines[2] == "| W2 | 90.00 | 12.3 | 7.7 |"
    rec = record("clado", "quick", 91.0, n=1)
    rec["headline"].append({"method": "clado", "label": "W2A8", "value": {"mean": 80.0, "std": 0.0, "n": 1}})
    assert "W4A8 91.00; W2A8 80.00 (quick settings, 1 seed) |" in acc.readme_block({"clado": rec})
    rec["headline"][1]["value"]["n"] = 3
    assert "W4A8 91.00 (quick settings, 1 seed); W2A8 80.00 +- 0.00 (quick settings) |" in acc.readme_block({"clado": rec})


def test_last_json_finds_the_final_object():
    assert acc.last_json('progress {not json\n{"a": 1}\n') == {"a": 1}
    assert acc.last_json('{"a": 1}\nrow\n{\n "b": [1,\n  2]\n}\n') == {"b": [1, 2]}
    with pytest.raises(ValueError):
        acc.last_json("no json here")


class _CannedSection(acc.Section):
    """A Section whose runs return canned script output instead of running anything."""

    def run(self, args, all_threads=False, keep=None):
        self._runs.append({"command": " ".join(args)})
        if args[0] == "benchmarks/metric_floor.py":
            return {"rows": [{"dtype": "bfloat16", "metric": 80.0, "agreement": 96.0},
                             {"dtype": "float16", "metric": 81.0, "agreement": 99.5}]}
        seed = int(args[args.index("--seed") + 1])
        return {"metric": 70.0 + seed, "agreement": 90.0, "size_bytes": 10, "seconds": 1.0, "fp_metric": 82.0,
                "fp_size_bytes": 40}


@pytest.mark.parametrize("quick", [True, False])
def test_models_section_rows(quick):
    s = _CannedSection("models", quick)
    acc.sec_models(s, quick)
    assert [t["title"] for t in s.tables] == ["mobilenet_v2", "minilm"]
    for t in s.tables:
        fp, bf16, fp16 = t["rows"][:3]
        assert fp[:4] == ["FP32", "W32A32", 82.0, 100.0]
        assert bf16[0].startswith("FP32, parameters rounded to bfloat16") and bf16[2:5] == [80.0, 96.0, 20]
        assert fp16[3] == 99.5
        assert sum("metric_floor.py" in r["command"] for r in t["runs"]) == 1
        ada = [r for r in t["rows"] if r[0].startswith("adaround")]
        ada_runs = [r["command"] for r in t["runs"] if "adaround" in r["command"]]
        assert len(ada) == (0 if quick and t["title"] == "mobilenet_v2" else 1)
        assert len(ada_runs) == len(ada)
        assert all(('"num_samples": 256' in c) != quick and "--seed 0 " in c for c in ada_runs), ada_runs
        if quick or t["title"] == "mobilenet_v2":  # one seed throughout
            assert all(r[2]["n"] == 1 for r in t["rows"][3:])
            assert not any("(seed 0)" in r[0] for r in t["rows"])
        else:  # minilm in full mode: 3 seeds, AdaRound on seed 0 alone, said in its label
            assert t["rows"][3][2] == {"mean": 71.0, "std": 1.0, "n": 3}
            assert all(r[0].endswith("(seed 0)") and r[2]["n"] == 1 for r in ada)


def test_page_names_the_weights_when_sections_used_different_ones():
    a = record("nearest", "full", 90.0, weights={"fmnist_resnet-x.safetensors": "aaaa11112222"})
    b = record("adaround", "full", 91.0, weights={"fmnist_resnet-x.safetensors": "bbbb33334444"})
    c = record("n2uq", "full", 89.0)  # an old record without the weights field
    page = acc.render_page({"nearest": a, "adaround": b, "n2uq": c}, [])
    note = " ".join(page.split())
    assert "aaaa11112222 (nearest); bbbb33334444 (adaround); not recorded (n2uq)" in note
    same = acc.render_page({"nearest": a, "adaround": dict(b, weights=a["weights"])}, [])
    assert "not bit-identical" not in same
