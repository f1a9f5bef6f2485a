"""The exported files: one self-contained HTML page (weights, JavaScript and page in one file),
or the model as JSON beside the JavaScript as an ES module; each written whole or not at all."""

import json
from importlib import resources
from pathlib import Path

from jaxchar.core.atomic import write_text
from jaxchar.errors import UserError
from jaxchar.exporting import weights
from jaxchar.core.restore import Restored

MODULE_FILE = "jaxchar-model.js"


def _source(name: str) -> str:
  return resources.files("jaxchar.exporting").joinpath(name).read_text(encoding="utf-8")


def model_js() -> str:
  """The forward pass and sampling, as a classic script (defines `jaxcharModel`)."""
  return _source("model.js")


def module_js() -> str:
  """The same code as an ES module: `import {load} from "./jaxchar-model.js"`."""
  return (model_js() + "\nexport const {Model, choose, logSoftmax, load} = jaxcharModel;\n"
          "export default jaxcharModel;\n")


def page(spec: dict) -> str:
  """The page with the model inside it; `<` escaped so no text in the JSON ends its script."""
  model_json = json.dumps(spec, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
  return (_source("page.html").replace("/*MODEL_JSON*/", model_json)
          .replace("/*MODEL_JS*/", model_js()))


def check_size(restored: Restored, float16: bool) -> int:
  """The weights' size in the file; UserError above weights.MAX_BYTES."""
  size = weights.encoded_bytes(restored, float16)
  if size > weights.MAX_BYTES:
    half = weights.encoded_bytes(restored, True)
    fix = (f"--float16 halves it to {half / 2**20:,.0f} MB, under the limit"
           if not float16 and half <= weights.MAX_BYTES else
           "it is too large for a browser page even in float16; serve it with "
           "`python -m jaxchar.serve` instead")
    raise UserError(f"the model's weights would take {size / 2**20:,.0f} MB in the file, over "
                    f"the {weights.MAX_BYTES // 2**20} MB a page can reasonably load; {fix}.")
  return size


def export(restored: Restored, out: Path, format: str, float16: bool) -> list[Path]:
  """Writes the export; returns the files written."""
  check_size(restored, float16)
  spec = weights.describe(restored, float16)
  if format == "html":
    write_text(out, [page(spec)], "the export")
    return [out]
  module = out.parent / MODULE_FILE
  if module.resolve() == out.resolve():
    raise UserError(f"--out={out} is the name of the JavaScript module written beside the JSON; "
                    "call the JSON something else, e.g. --out=model.json.")
  write_text(out, [json.dumps(spec, ensure_ascii=False, separators=(",", ":"))], "the export")
  write_text(module, [module_js()], "the export")
  return [out, module]
