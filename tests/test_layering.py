"""The import rules of the design: musicsae_jax/ never imports torch, bridge/ never imports
JAX, and the store loads with numpy + tensorstore only (the bridge writes through it); the
project's import graph (bridge/, musicsae_jax/, launch/, configs/) has no cycles, bridge/
packages import only lower layers, and every package says what it owns."""
import ast
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loaded_after(code: str) -> set[str]:
  out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
  return set(out.split())


def test_store_needs_neither_jax_nor_torch():
  mods = loaded_after("import musicsae_jax, musicsae_jax.store")
  assert "jax" not in mods and "torch" not in mods and "flax" not in mods


def test_bridge_never_loads_jax():
  names = [os.path.relpath(p, ROOT)[:-3].replace(os.sep, ".")
           for p in glob.glob(f"{ROOT}/bridge/**/*.py", recursive=True)]
  mods = loaded_after("; ".join(f"import {n}" for n in names if not n.endswith("__init__")))
  assert "torch" in mods and not {"jax", "flax", "optax"} & mods


def test_no_forbidden_import_statements():
  rule = {"musicsae_jax": r"^\s*(import torch|from torch)\b",
          "bridge": r"^\s*(import|from) (jax|flax|optax)\b"}
  for room, pattern in rule.items():
    for path in glob.glob(f"{ROOT}/{room}/**/*.py", recursive=True):
      for n, line in enumerate(open(path), 1):
        assert not re.match(pattern, line), f"{path}:{n}: {line.strip()}"


# --- the project's import graph: no cycles, packages that say what they own ----------------

ROOMS = ("bridge", "musicsae_jax", "launch", "configs")
# bridge/ packages, lower layers first: a module imports only from its own package or the
# ones before it (bridge/__init__.py describes them).
BRIDGE_LAYERS = ("config_defaults", "sources", "models", "measures", "capture", "steering",
                 "localize", "organism")


def project_modules(root: str = ROOT) -> dict[str, str]:
  """Dotted module name -> file, for every .py under the four top-level packages."""
  mods = {}
  for room in ROOMS:
    for path in glob.glob(f"{root}/{room}/**/*.py", recursive=True):
      parts = os.path.relpath(path, root)[:-3].split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      mods[".".join(parts)] = path
  return mods


def imports_of(source: str, module: str, is_package: bool, known) -> set[str]:
  """The project modules `source` imports anywhere (module level or inside functions).
  `from a.b import c` counts as importing a.b.c when that is a module, else a.b."""
  def owner(name):                      # the longest known module prefix of a dotted name
    while name and name not in known:
      name = name.rpartition(".")[0]
    return name or None
  package = module if is_package else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out.update(owner(a.name) for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:                    # relative: from . import x / from ..a import b
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module
      for a in node.names:
        full = f"{target}.{a.name}"
        out.add(full if full in known else owner(target))
  out.discard(None)
  out.discard(module)
  return out


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
  mods = project_modules(root)
  return {m: imports_of(open(p).read(), m, p.endswith("__init__.py"), mods)
          for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One closed path (first node repeated at the end) per strongly connected component
  with more than one module (Tarjan), so a failure names the modules in import order."""
  index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = set()
      while True:
        w = stack.pop()
        on.discard(w)
        comp.add(w)
        if w == v:
          break
      if len(comp) > 1:
        comps.append(comp)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  out = []
  for comp in comps:          # the shortest path inside the component back to its first module
    start = min(comp)
    prev, queue, end = {start: None}, [start], None
    while end is None:        # breadth first; in a component every module leads back to start
      v = queue.pop(0)
      for w in sorted(graph[v]):
        if w == start:
          end = v
          break
        if w in comp and w not in prev:
          prev[w] = v
          queue.append(w)
    path = []
    while end != start:
      path.insert(0, end)
      end = prev[end]
    out.append([start, *path, start])
  return out


def test_cycle_finder_names_a_cycle_and_sees_function_level_imports():
  known = {"p", "p.a", "p.b", "p.c"}
  g = {"p.a": imports_of("from p import b\n", "p.a", False, known),
       "p.b": imports_of("def f():\n  import p.c\n", "p.b", False, known),
       "p.c": imports_of("from . import a\nimport os\n", "p.c", False, known)}
  assert g == {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}
  assert cycles(g) == [["p.a", "p.b", "p.c", "p.a"]]
  g["p.c"] = set()
  assert cycles(g) == []


def test_no_import_cycles():
  graph = import_graph()
  assert len(graph) > 100 and graph["launch.steer"]        # the walk found the project
  found = cycles(graph)
  assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_bridge_packages_import_only_lower_layers():
  def layer(module):
    parts = module.split(".")
    return BRIDGE_LAYERS.index(parts[1]) if len(parts) > 1 else None
  bad = []
  for m, deps in import_graph().items():
    if not m.startswith("bridge.") or m.split(".")[1] not in BRIDGE_LAYERS:
      continue
    bad += [f"{m} -> {d}" for d in sorted(deps)
            if d.startswith("bridge.") and layer(d) is not None and layer(d) > layer(m)]
  assert not bad, f"imports against the order {BRIDGE_LAYERS}:\n" + "\n".join(bad)


def test_every_package_is_installed_and_says_what_it_owns():
  """A folder of modules without __init__.py is left out by `pip install .` (setuptools
  finds packages by it); each __init__ opens with a docstring of what the package owns."""
  folders = {os.path.dirname(p) for room in ROOMS
             for p in glob.glob(f"{ROOT}/{room}/**/*.py", recursive=True)}
  for folder in sorted(folders):
    init = os.path.join(folder, "__init__.py")
    assert os.path.exists(init), f"{os.path.relpath(folder, ROOT)}/ has modules but no __init__.py"
    doc = ast.get_docstring(ast.parse(open(init).read()))
    assert doc and len(doc.split()) >= 8, f"{os.path.relpath(init, ROOT)}: no docstring saying what the package owns"
