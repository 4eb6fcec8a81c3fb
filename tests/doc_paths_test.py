"""Every file the docs name exists (issue 29, "Docs that lead").

Read: README.md, BUILD.md, docs/*.md, the presets' comments (flags/*.cfg) and the docstrings and
comments of maxl_tf/**/*.py. Checked:

- paths under the repository's folders (`maxl_tf/core/steps.py`, `docs/x.png`, `tests/x_test.py`,
  `.ci/run`), and the short forms the docs use for the package's subpackages (`core/steps.py`,
  `experiment/config`, `models/maxl.MAXL.train_step`: the module is what must exist);
- bare file names (`state.py`, `smoke.cfg`): some file of the repository has that name;
- dotted names of the subpackages (`data.source.Source`, `models.build_evaluator`): the module,
  or a name in the subpackage's __init__.py;
- in the Markdown files, every relative link and its #anchor;
- section references, `README, "Your own data"` or `BUILD.md ("Three hypergradients")`: the file
  has a heading (or a bold paragraph lead, `**Disk.**`) that starts with the quoted words.

Not read: code (only docstrings and comments), URLs, and paths under a folder the repository does
not have (`runs/...`, `/tmp/...`, `~/.cache/...`), which are where runs and caches go. Placeholders
(`<logdir>/flags.cfg`) stop a path at the `<`. The few names below are a user's, a run's or the
authors' files, or one the repository had when a measurement ran it.
"""

import ast
import io
import os
import re
import tokenize
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "maxl_tf")
TOP = ("maxl_tf", "docs", "flags", "tests", "benchmarks", "examples", r"\.ci")
SUBPACKAGES = ("core", "models", "experiment", "data")  # named without maxl_tf/ in the docs

# Names that are not the repository's files, each with why.
NOT_REPOSITORY_FILES = {
    "my_nets.py",  # README: the user's own backbone module, `--model=my_nets:resnet_small`
    "flags.cfg",  # what every run directory holds (`<logdir>/flags.cfg`), not a preset
    "report.md",  # what `maxl-tf report` writes into its --out folder
    "model_vgg_maxl_firstorder.py",  # the authors' PyTorch code, which the design notes compare with
}
# A file that existed, named where a measurement says what it ran: (document, path).
HISTORICAL = {
    ("docs/measurements.md", "examples/train_own_backbone.py"),  # measured at e7b062a, removed by 645b679
}

_BOUNDARY = r"(?<![\w./~<>-])"  # not inside a longer path, a URL or a placeholder
PATH = re.compile(_BOUNDARY + r"((?:%s)/[\w./-]*\w)" % "|".join(TOP + SUBPACKAGES))
BARE = re.compile(_BOUNDARY + r"([A-Za-z_][\w-]*\.(?:py|cfg|md|toml))\b(?![/\w-])")
DOTTED = re.compile(_BOUNDARY + r"(?:maxl_tf\.)?((?:%s)\.[A-Za-z_]\w*)" % "|".join(SUBPACKAGES))
LINK = re.compile(r"\]\(([^)\s]+)\)")
SECTION = re.compile(
    r"\b(README(?:\.md)?|BUILD\.md|(?:docs/)?measurements\.md|(?:docs/)?results\.md)(?:'s)?,?\s*\(?\s*\"([^\"]+)\""
)
SECTION_FILES = {
    "README": "README.md",
    "README.md": "README.md",
    "BUILD.md": "BUILD.md",
    "measurements.md": "docs/measurements.md",
    "docs/measurements.md": "docs/measurements.md",
    "results.md": "docs/results.md",
    "docs/results.md": "docs/results.md",
}
_PRUNE = {".git", "__pycache__", "runs", "build", "dist", ".venv", "venv", ".pytest_cache", ".ruff_cache"}


def _file_names() -> set:
    names = set()
    for _root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _PRUNE and not d.endswith(".egg-info")]
        names.update(files)
    return names


def _read(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def _docs() -> list:
    docs = ["README.md", "BUILD.md"]
    docs += sorted(os.path.join("docs", n) for n in os.listdir(os.path.join(REPO, "docs")) if n.endswith(".md"))
    docs += sorted(os.path.join("flags", n) for n in os.listdir(os.path.join(REPO, "flags")) if n.endswith(".cfg"))
    return docs


def _python_files() -> list:
    found = []
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [os.path.relpath(os.path.join(root, n), REPO) for n in sorted(files) if n.endswith(".py")]
    return found


def prose_of_python(source: str) -> str:
    """The source with everything but docstrings and comments blanked, lines kept in place."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    docstrings.add((body[0].lineno, body[0].col_offset))
    lines = [""] * (source.count("\n") + 2)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        (row, col), text = token.start, token.string
        if token.type == tokenize.COMMENT:
            lines[row - 1] += " " + text[1:]
        elif token.type == tokenize.STRING and (row, col) in docstrings:
            for i, part in enumerate(text.split("\n")):
                lines[row - 1 + i] += " " + part
    return "\n".join(lines)


def _module_exists(base: str, dotted_path: str) -> bool:
    """base/dotted_path as a file or folder, or as a module with attributes after it
    (core/steps.iteration -> core/steps.py)."""
    path = dotted_path
    while True:
        full = os.path.join(base, path)
        if os.path.exists(full) or os.path.exists(full + ".py"):
            return True
        head, _, tail = path.rpartition("/")
        if "." not in tail:
            return False
        path = (head + "/" if head else "") + tail.rsplit(".", 1)[0]


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: str) -> list:
    text = _read(path)
    found = [m.group(1) for m in re.finditer(r"^#+ (.+)$", text, re.M)]
    found += [m.group(1) for m in re.finditer(r"^\*\*([^*]+?)\.?\*\*", text, re.M)]  # **Disk.** leads
    return found


def anchors(path: str) -> set:
    seen, result = {}, set()
    for heading in (m.group(1) for m in re.finditer(r"^#+ (.+)$", _read(path), re.M)):
        base = slug(heading)
        result.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return result


def _normal(text: str) -> str:
    return " ".join(text.replace("`", "").lower().split())


def broken_references(path: str, text: str, file_names: set) -> list:
    """'path:line: what' for each reference in text that names nothing the repository has."""
    broken = []

    def report(match, what):
        broken.append(f"{path}:{text.count(chr(10), 0, match.start()) + 1}: {what}")

    for match in PATH.finditer(text):
        name = match.group(1)
        bases = [REPO] + ([PACKAGE] if name.split("/")[0] in SUBPACKAGES else [])
        if not any(_module_exists(base, name) for base in bases) and (path, name) not in HISTORICAL:
            report(match, f"no file {name}")
    for match in BARE.finditer(text):
        if match.group(1) not in file_names and match.group(1) not in NOT_REPOSITORY_FILES:
            report(match, f"no file named {match.group(1)}")
    for match in DOTTED.finditer(text):
        package, _, name = match.group(1).partition(".")
        if name == "py":
            continue  # a file name: BARE's
        init = os.path.join(PACKAGE, package, "__init__.py")
        with open(init, encoding="utf-8") as f:
            in_init = re.search(rf"\b{name}\b", f.read())
        if not (_module_exists(os.path.join(PACKAGE, package), name) or in_init):
            report(match, f"no module or name {match.group(1)} (maxl_tf/{package}/{name}.py)")
    for match in SECTION.finditer(text):
        target = SECTION_FILES[match.group(1)]
        quoted = _normal(match.group(2))
        if not any(_normal(h).startswith(quoted) for h in headings(target)):
            report(match, f'no section "{match.group(2)}" in {target}')
    if path.endswith(".md"):
        for match in LINK.finditer(text):
            link = match.group(1)
            if re.match(r"[a-z]+:", link):
                continue  # https:, mailto:
            target, _, anchor = link.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            if not os.path.exists(os.path.join(REPO, resolved)):
                report(match, f"link to a missing file {link}")
            elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
                report(match, f"link to a missing section {link}")
    return broken


class DocPathsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.file_names = _file_names()

    def test_docs_and_presets_name_what_exists(self):
        broken = []
        for path in _docs():
            text = _read(path)
            if path.endswith(".cfg"):  # comments: a reference may go on on the next line
                text = re.sub(r"^#", " ", text, flags=re.M)
            broken += broken_references(path, text, self.file_names)
        self.assertEqual(broken, [], "\n" + "\n".join(broken))

    def test_package_docstrings_and_comments_name_what_exists(self):
        broken = []
        for path in _python_files():
            broken += broken_references(path, prose_of_python(_read(path)), self.file_names)
        self.assertEqual(broken, [], "\n" + "\n".join(broken))

    def test_the_checks_catch_what_they_are_for(self):
        """Each kind of broken reference is found, and the paths that are not the repository's
        are left alone."""
        text = (
            "see data.py, models.build_evaluator, core/nothing.py, docs/nothing.png, "
            'README, "No such section", and [x](docs/measurements.md#no-such-anchor)\n'
            "fine: core/steps.iteration, models/maxl.MAXL.train_step, experiment/config, data.source.Source, "
            "maxl_tf/core/steps.py, tests/smoke_util.py, .ci/run, flags/smoke.cfg, state.py, "
            'README, "Your own data", runs/x/results.json, /tmp/qs/flags.cfg, ~/.cache/maxl_tf/images, '
            "<logdir>/flags.cfg, https://example.com/docs/x.py, my_nets.py, [m](docs/measurements.md#gpu)\n"
        )
        broken = broken_references("README.md", text, self.file_names)
        self.assertEqual(len(broken), 6, "\n".join(broken))
        for expected in ("data.py", "models.build_evaluator", "core/nothing.py", "docs/nothing.png"):
            self.assertTrue(any(expected in line for line in broken), expected)
        self.assertTrue(any("No such section" in line for line in broken))
        self.assertTrue(any("no-such-anchor" in line for line in broken))
        prose = prose_of_python('"""Doc: data.py."""\nx = "not.py"  # comment: models.py\n')
        self.assertEqual(prose.splitlines()[:2], [' """Doc: data.py."""', "  comment: models.py"])


if __name__ == "__main__":
    unittest.main()
