"""Tests for maxl_tf.data.hierarchy_file: the two formats, what follows from them, and every bad file."""

import json
import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import hierarchy
from maxl_tf.data import hierarchy_file

# A folder's classes, sorted as folder names are.
CLASSES = ("bus", "car", "cat", "dog", "owl", "truck")
# animal: cat, dog, owl; vehicle: bus, car, truck. Principal classes in the file's order: vehicle 0, animal 1.
TREE = {"vehicle": ["truck", "car", "bus"], "animal": ["owl", "cat", "dog"]}
FINE_TO_PRINCIPAL = [0, 0, 1, 1, 1, 0]


class HierarchyFileTest(tf.test.TestCase, parameterized.TestCase):
    def _file(self, name: str, text: str) -> str:
        path = os.path.join(self.get_temp_dir(), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def _json(self, tree) -> str:
        return self._file("hierarchy.json", json.dumps(tree))

    def _assert_two_levels(self, named: hierarchy.Hierarchy):
        self.assertEqual(sorted(named.levels), [2, 6])
        self.assertAllEqual(named.levels[6], np.arange(6))
        self.assertAllEqual(named.levels[2], FINE_TO_PRINCIPAL)
        self.assertEqual(named.names, {6: CLASSES, 2: ("vehicle", "animal")})
        self.assertEqual(named.name, "my_images")

    def test_json(self):
        self._assert_two_levels(hierarchy_file.load(self._json(TREE), "my_images", CLASSES))

    @parameterized.named_parameters(
        ("with_header", "fine,principal\n"),
        ("header_in_other_case_and_spaces", " Fine , Principal \n"),
        ("without_header", ""),
    )
    def test_csv(self, header):
        rows = 'bus,vehicle\ncar, vehicle\n\ncat,animal\n"dog",animal\nowl,animal\ntruck,vehicle\n'
        path = self._file("hierarchy.csv", header + rows)
        self._assert_two_levels(hierarchy_file.load(path, "my_images", CLASSES))

    def test_excel_csv_with_byte_order_mark_and_crlf(self):
        rows = "fine,principal\r\n" + "".join(
            f"{c},{'vehicle' if c in TREE['vehicle'] else 'animal'}\r\n" for c in CLASSES
        )
        path = os.path.join(self.get_temp_dir(), "excel.csv")
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf" + rows.encode())
        self._assert_two_levels(hierarchy_file.load(path, "my_images", CLASSES))

    def test_psi_and_human_labels_follow_the_file(self):
        tree = {"animal": ["cat", "dog", "owl"], "vehicle": ["bus", "car"], "boat": ["truck"]}
        named = hierarchy_file.load(self._json(tree), "my_images", CLASSES)
        # Principal classes in the file's order: animal 0, vehicle 1, boat 2 -> psi [3, 2, 1].
        self.assertEqual(named.names[3], ("animal", "vehicle", "boat"))
        self.assertEqual(hierarchy.human_psi(named, 3, 6), (3, 2, 1))
        self.assertEqual(hierarchy.resolve_psi(named, 3, 6), (3, 2, 1))
        self.assertEqual(hierarchy.resolve_psi(named, 3, 9), (3, 3, 3))
        # Blocks: animal 0..2 (cat, dog, owl), vehicle 3..4 (bus, car), boat 5 (truck).
        fine = np.arange(6)  # bus, car, cat, dog, owl, truck
        self.assertAllEqual(hierarchy.human_aux_labels(named, 3, 6, fine), [3, 4, 0, 1, 2, 5])
        self.assertAllEqual(named.labels_at(3, fine), [1, 1, 0, 0, 0, 2])

    def test_the_file_orders_the_principal_classes(self):
        # The same tree written in the other order swaps labels 0 and 1; a .csv's first mentions count.
        swapped = hierarchy_file.load(self._json(dict(reversed(TREE.items()))), "my_images", CLASSES)
        self.assertEqual(swapped.names[2], ("animal", "vehicle"))
        self.assertAllEqual(swapped.levels[2], 1 - np.asarray(FINE_TO_PRINCIPAL))
        path = self._file("h.csv", "cat,animal\nbus,vehicle\ncar,vehicle\ndog,animal\nowl,animal\ntruck,vehicle\n")
        self.assertEqual(hierarchy_file.load(path, "my_images", CLASSES).names[2], ("animal", "vehicle"))

    def test_flat_without_a_file(self):
        named = hierarchy_file.flat("my_images", CLASSES)
        self.assertEqual(named.names, {6: CLASSES})
        self.assertEqual(sorted(named.levels), [6])
        self.assertEqual(hierarchy.resolve_psi(named, 6, 12), (2,) * 6)
        self.assertIsNone(hierarchy.human_psi(named, 6, 12))
        with self.assertRaisesRegex(errors.Error, r"--pri=6 --aux=8"):
            hierarchy.resolve_psi(named, 6, 8)

    # --- bad files: one line naming the file and the fix -----------------------------------------

    def _assert_error(self, path: str, pattern: str, classes=CLASSES):
        with self.assertRaisesRegex(errors.Error, pattern) as caught:
            hierarchy_file.load(path, "my_images", classes)
        self.assertEqual(caught.exception.exit_code, 2)
        self.assertNotIn("\n", str(caught.exception))
        self.assertIn(f"--hierarchy={path}", str(caught.exception))

    def test_unknown_class_suggests_the_close_name(self):
        tree = {"vehicle": ["truck", "car", "buss"], "animal": ["owl", "cat", "dog"]}
        self._assert_error(
            self._json(tree),
            r"names 1 class\(es\) the data does not have, e\.g\. 'buss' "
            r"\(did you mean 'bus'\?\)",
        )

    def test_a_header_other_than_fine_principal_says_what_it_must_be(self):
        rows = "class,principal\nbus,vehicle\ncar,vehicle\ncat,animal\ndog,animal\nowl,animal\ntruck,vehicle\n"
        self._assert_error(
            self._file("hierarchy.csv", rows),
            r"line 1: class,principal reads as a header; a header must be exactly 'fine,principal'",
        )

    def test_class_left_out(self):
        tree = {"vehicle": ["truck", "car"], "animal": ["cat", "dog"]}
        self._assert_error(self._json(tree), r"leaves out 2 class\(es\) of the data \('bus', 'owl'\)")

    def test_class_under_two_principals(self):
        tree = {"vehicle": ["truck", "car", "bus"], "animal": ["owl", "cat", "dog", "car"]}
        self._assert_error(self._json(tree), r"class 'car' is listed under both 'vehicle' and 'animal'")
        path = self._file("h.csv", "bus,vehicle\ncar,vehicle\ncat,animal\ncar,animal\n")
        self._assert_error(
            path,
            r"line 4: class 'car' is listed under both 'vehicle' and 'animal' "
            r"\(first on line 2\)",
        )

    def test_class_listed_twice(self):
        self._assert_error(self._json({"a": ["cat", "cat"], "b": ["dog"]}), r"'cat' is listed twice under 'a'")

    def test_duplicate_json_key(self):
        path = self._file("h.json", '{"a": ["cat"], "b": ["dog"], "a": ["owl"]}')
        self._assert_error(path, r"principal class 'a' is a key twice")

    @parameterized.named_parameters(
        ("not_json", '{"a": ["cat", "dog"],', r"not valid JSON \(Expecting .* line 1 column"),
        ("list", '["cat", "dog"]', r"must be a non-empty object"),
        ("empty_object", "{}", r"must be a non-empty object"),
        ("string_value", '{"a": "cat"}', r"'a' must map to a non-empty list of class names, not \"cat\""),
        ("empty_list", '{"a": []}', r"'a' must map to a non-empty list"),
        ("number_in_list", '{"a": ["cat", 3]}', r"'a' must map to a non-empty list of class names"),
        ("unnamed_principal", '{"": ["cat"], "b": ["dog"]}', r"a principal class is named ''; give each"),
        ("blank_principal", '{" ": ["cat"], "b": ["dog"]}', r"a principal class is named ' '; give each"),
    )
    def test_malformed_json(self, text, pattern):
        self._assert_error(self._file("h.json", text), pattern)

    @parameterized.named_parameters(
        ("three_columns", "cat,animal,extra\n", r"line 1: 'cat,animal,extra' is not 'fine class,principal class'"),
        ("one_column", "fine,principal\ncat\n", r"line 2: 'cat' is not"),
        ("empty_name", "cat,\n", r"line 1: 'cat,' is not"),
        ("empty_file", "\n\n", r"holds no rows"),
    )
    def test_malformed_csv(self, text, pattern):
        self._assert_error(self._file("h.csv", text), pattern)

    def test_other_header_is_a_row(self):
        path = self._file(
            "h.csv", "class,superclass\n" + "".join(f"{c},{'v' if c in TREE['vehicle'] else 'a'}\n" for c in CLASSES)
        )
        self._assert_error(path, r"'class'")

    def test_missing_file_and_unknown_extension(self):
        self._assert_error(os.path.join(self.get_temp_dir(), "none.json"), r"no such file")
        self._assert_error(self._file("h.txt", "cat,animal\n"), r"name it \.json or \.csv")

    def test_binary_file(self):
        path = os.path.join(self.get_temp_dir(), "h.csv")
        with open(path, "wb") as f:
            f.write(b"\xff\xfe\x00\x81")
        self._assert_error(path, r"unreadable \(UnicodeDecodeError")

    def test_one_principal_or_one_per_class_adds_nothing(self):
        self._assert_error(self._json({"all": list(CLASSES)}), r"under 1 principal class;")
        self._assert_error(self._json({f"p_{c}": [c] for c in CLASSES}), r"under 6 principal classes;")


if __name__ == "__main__":
    tf.test.main()
