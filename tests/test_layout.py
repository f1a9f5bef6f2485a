"""The architecture the code promises: each option defined once (flags and configs built from
that one definition), no library module importing an entry point, no test importing another;
and what a newcomer sees (plain-text samples, the prime as the model used it, early stopping
reported only when it stopped a run early)."""

import ast
import json
import re

import pytest

from helpers import REPO, run_python, tiny_config
from jaxchar.sampling import sampler as sampler_lib
from jaxchar.sampling.config import SampleConfig
from jaxchar.training.loop import train_and_evaluate

ENTRY_POINTS = {  # module: the config classes its flags come from
    "jaxchar.train": ["jaxchar.training.config:Config", "jaxchar.training.config:Launch"],
    "jaxchar.sample": ["jaxchar.sampling.config:SampleConfig"],
    "jaxchar.score": ["jaxchar.scoring.config:ScoreConfig"],
    "jaxchar.export": ["jaxchar.exporting.config:ExportConfig"],
    "jaxchar.bench_page": ["jaxchar.benchmarking.page:BrowserBenchConfig"],
    "jaxchar.serve": ["jaxchar.serving.config:ServeConfig"],
    "jaxchar.plot": ["jaxchar.training.plots:PlotConfig"],
    "jaxchar.bench": ["jaxchar.benchmarking.side_by_side:BenchConfig"],
    "jaxchar.bench_device": ["jaxchar.benchmarking.device_suite:DeviceBenchConfig"],
    "jaxchar.bench_serve": ["jaxchar.benchmarking.serving:ServeBenchConfig"],
    "jaxchar.bench_startup": ["jaxchar.benchmarking.startup:StartupBenchConfig"],
    "jaxchar.compile_check": ["jaxchar.training.config:Config", "jaxchar.training.config:Launch",
                              "jaxchar.aot.check:CheckConfig"],
}
# Run in one fresh process for all entry points, one after the other: each defines --workdir
# etc. in absl's global FLAGS, so the flags one defined are deleted before the next is imported.
# For each: its own flags, and for every option the flag's default and help against the
# definition's.
PROBE = """
import dataclasses, importlib, json, sys
from absl import flags
from jaxchar import options
reports = {}
for name, specs in json.loads(sys.argv[1]).items():
  module = importlib.import_module(name)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["probe"])
  own = {f.name for f in flags.FLAGS.get_flags_for_module(module.__name__)}
  report = reports[name] = {"own_flags": sorted(own), "options": []}
  for spec in specs:
    cls = getattr(importlib.import_module(spec.split(":")[0]), spec.split(":")[1])
    report["defaults_equal"] = report.get("defaults_equal", True) and (
        options.from_flags(cls) == cls())
    for field in options.option_fields(cls):
      flag = flags.FLAGS[options.flag_name(field)]
      report["options"].append({"flag": flag.name, "field": repr(field.default),
                                "flag_default": repr(flag.default),
                                # enum flags put <a|b>: before the help, repeatable ones
                                # say so after it
                                "same_help": field.metadata["help"] in flag.help,
                                "from_flag": repr(getattr(options.from_flags(cls), field.name)),
                                "old_names": list(field.metadata.get("old_names", ()))})
  for flag_name in own:
    delattr(flags.FLAGS, flag_name)
print(json.dumps(reports))
"""


@pytest.fixture(scope="module")
def flag_reports() -> dict:
  result = run_python("-c", PROBE, json.dumps(ENTRY_POINTS), devices=None, timeout=300)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_every_flag_comes_from_its_one_option_definition(module, flag_reports):
  report = flag_reports[module]
  defined = sorted([o["flag"] for o in report["options"]]
                   + [old for o in report["options"] for old in o["old_names"]])  # aliases
  assert report["own_flags"] == defined  # no flag of the entry point outside the definitions
  assert report["defaults_equal"]
  for o in report["options"]:
    assert o["from_flag"] == o["field"], o  # the flag's default is the config's default
    assert o["same_help"], o


def _imports(path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)
  return names


def test_flags_are_defined_only_by_the_options_module():
  for path in sorted((REPO / "jaxchar").rglob("*.py")):
    if path.name != "options.py":
      assert "DEFINE_" not in path.read_text(encoding="utf-8"), path


def test_no_library_module_imports_an_entry_point():
  entry_modules = set(ENTRY_POINTS)
  for path in sorted((REPO / "jaxchar").rglob("*.py")):
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if module in entry_modules:
      continue
    assert not _imports(path) & entry_modules, (module, _imports(path) & entry_modules)


def _module_imports() -> dict[str, set[str]]:
  """Every jaxchar module and the jaxchar modules it imports (at any level of its code)."""
  modules = {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
             for path in (REPO / "jaxchar").rglob("*.py")}
  return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def test_readers_do_not_depend_on_the_trainer():
  """Sampling, scoring, exporting and serving (and their entry points) reach no training
  module through any chain of imports: what they share with training sits in core/."""
  graph = _module_imports()
  readers = [m for m in graph if m.split(".")[1:2] in (["sampling"], ["scoring"], ["exporting"],
                                                        ["serving"])]
  readers += ["jaxchar.sample", "jaxchar.score", "jaxchar.export", "jaxchar.serve"]
  for reader in readers:
    seen, todo = set(), [reader]
    while todo:
      for imported in graph[todo.pop()] - seen:
        seen.add(imported)
        todo.append(imported)
    assert not {m for m in seen if m.startswith("jaxchar.training")}, reader


def test_entry_points_are_the_top_level_modules_and_only_they():
  runnable = {".".join(path.relative_to(REPO).with_suffix("").parts)
              for path in (REPO / "jaxchar").rglob("*.py")
              if '__name__ == "__main__"' in path.read_text(encoding="utf-8")}
  assert runnable == set(ENTRY_POINTS)
  assert all(name.count(".") == 1 for name in runnable)


def test_the_model_is_constructed_in_one_place():
  """Every model the project runs comes from ModelSpec.model: one CharLSTM(...) call."""
  calls = [f"{path.relative_to(REPO)}:{node.lineno}"
           for path in sorted((REPO / "jaxchar").rglob("*.py"))
           for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
           if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CharLSTM"]
  assert len(calls) == 1 and calls[0].startswith("jaxchar/core/spec.py:"), calls


def test_no_test_module_imports_another():
  for path in sorted((REPO / "tests").glob("*.py")):
    others = {name for name in _imports(path)
              if name.split(".")[0].startswith("test_") or name.split(".")[0] == "conftest"}
    assert not others, (path.name, others)


def test_samples_print_plain_text_and_early_stopping_only_when_it_stopped_early(
    tiny_file, tmp_path, capsys):
  # patience 1 over 2 epochs at a high rate: epoch 2 may be its first without a new best, but
  # 2 was the last planned epoch anyway, so nothing stopped early.
  config = tiny_config(tiny_file, epochs=2, patience=1, learning_rate=0.5, sample_len=10)
  history = train_and_evaluate(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert len(history) == 2
  assert "samples after epoch 2" in out and "----- temperature 1.0\n[" in out
  assert "## Epoch" not in out and "```" not in out
  assert "early stopping" not in out
  markdown = (tmp_path / "run" / "samples.md").read_text()
  assert markdown.count("## Epoch ") == 2 and markdown.count("### Temperature 0.5") == 2


def test_printed_prime_is_the_one_the_model_used(tiny_file, tmp_path):
  train_and_evaluate(tiny_config(tiny_file, epochs=1), tmp_path / "run")
  text = sampler_lib.run_sampling(SampleConfig(workdir=str(tmp_path / "run"), prime="MOE#: ",
                                               unknown="skip", length=5))
  sample = text.split("sample 1\n", 1)[1]
  assert sample.startswith("moe: ") and "MOE" not in text and "#:" not in text


def test_storage_is_one_seam():
  """Only jaxchar/core/storage/ knows a bucket from a disk: nothing else branches on gs:// or
  reaches a storage client, and nothing anywhere uses a client's private attributes."""
  storage_package = REPO / "jaxchar" / "core" / "storage"
  for path in sorted((REPO / "jaxchar").rglob("*.py")):
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\bfs\._\w", text), path
    if storage_package not in path.parents:
      assert "is_remote" not in text and "startswith(\"gs://\")" not in text, path
      assert not _imports(path) & {"gcsfs", "fsspec", "google.cloud.storage"}, path
