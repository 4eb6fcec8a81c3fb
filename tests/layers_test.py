"""The package's layers (pyproject.toml's import-linter contract) and no import circles.

Both count imports inside functions: grimp, import-linter's graph, reads every import statement.
"""

import subprocess
import sys
import unittest

import grimp


def _cycles(graph) -> list:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return components


class LayersTest(unittest.TestCase):
    def test_no_import_circles(self):
        graph = grimp.build_graph("maxl_tf")
        self.assertEqual(_cycles(graph), [])

    def test_cycle_finder_finds_a_circle(self):
        graph = grimp.ImportGraph()
        for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
            graph.add_import(importer=a, imported=b)
        self.assertEqual(_cycles(graph), [["p.a", "p.b", "p.c"]])

    def test_layers_contract_kept(self):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            ],
            capture_output=True,
            text=True,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-2000:])


if __name__ == "__main__":
    unittest.main()
