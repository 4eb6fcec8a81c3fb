"""A user's two-level class hierarchy, read from a file and checked against the data's classes.

Two formats, told apart by the file's extension:

    hierarchy.json   {"animal": ["cat", "dog"], "vehicle": ["car", "truck", "bus"]}
    hierarchy.csv    fine,principal        <- optional header, exactly these two words
                     cat,animal
                     car,vehicle
                     ...

Every class of the data (the fine classes: a folder's class folders, a tfds set's label names)
must appear exactly once, under one principal class; the principal classes are numbered in the
file's order (a .json's keys, a .csv's first mentions), so the user decides label 0, 1, ....
The principal classes become the principal task, and the fine classes the human auxiliary
task, whose psi (fine classes per principal class) is hierarchy.human_psi's. Without a file
(`flat`), the data's classes are the principal task and psi is uniform for any --aux that is a
multiple of their number (hierarchy.resolve_psi).
"""

from __future__ import annotations

from collections.abc import Sequence
import csv
import difflib
import json
import os
import stat

import numpy as np

from maxl_tf import errors
from maxl_tf.core import hierarchy as hierarchy_lib

_FORMAT = (
    'JSON {"principal class": ["fine class", ...], ...} in a .json file, or rows '
    '"fine class,principal class" in a .csv file'
)


def flat(dataset_name: str, class_names: Sequence[str]) -> hierarchy_lib.Hierarchy:
    """One level: the data's own classes, with their names."""
    num = len(class_names)
    return hierarchy_lib.Hierarchy(dataset_name, {num: np.arange(num)}, {num: tuple(class_names)})


def load(path: str, dataset_name: str, class_names: Sequence[str]) -> hierarchy_lib.Hierarchy:
    """The data's classes (finest level) under the principal classes of a hierarchy file.

    Args:
      path: a .json or .csv hierarchy file (module docstring).
      dataset_name: for messages.
      class_names: the data's classes, in label order.

    Returns:
      Two levels: len(class_names) fine classes, and the file's principal classes in the file's order
      (a .json's keys, a .csv's first mentions), so label i is the i-th principal class written.

    Raises:
      errors.Error: the file is missing or malformed, names a class the data does not have,
        leaves one out, puts one under two principal classes, or has one principal class only or
        one per fine class (then it adds nothing).
    """
    principal_of = _read(path)  # fine name -> principal name
    child, principal = next(iter(principal_of.items()))  # the file's first row (dicts keep order)
    if path.lower().endswith(".csv") and principal.lower() == "principal" and child not in class_names:
        raise errors.Error(
            f"--hierarchy={path} line 1: {child},{principal} reads as a header; a header must be exactly "
            "'fine,principal' (or leave it out)."
        )
    _check_classes(path, principal_of, class_names)
    principal_names = tuple(dict.fromkeys(principal_of.values()))  # the file's order
    fine, pri = len(class_names), len(principal_names)
    if pri < 2 or pri == fine:
        raise errors.Error(
            f"--hierarchy={path}: puts the {fine} classes under {pri} principal "
            f"class{'es' if pri > 1 else ''}; a hierarchy needs at least 2, and fewer "
            "than there are classes (without --hierarchy the classes are the "
            "principal task)."
        )
    index = {name: i for i, name in enumerate(principal_names)}
    fine_to_principal = np.asarray([index[principal_of[name]] for name in class_names], np.int64)
    levels = {fine: np.arange(fine), pri: fine_to_principal}
    return hierarchy_lib.Hierarchy(dataset_name, levels, {fine: tuple(class_names), pri: principal_names})


def _read(path: str) -> dict:
    """fine class -> principal class, as the file says; format errors name the place."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".json", ".csv"):
        raise errors.Error(f"--hierarchy={path}: name it .json or .csv to say its format: {_FORMAT}.")
    try:
        # Opened without blocking and checked to be a regular file before it is read: a FIFO (or a
        # device) would wait for a writer, or never end.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise errors.Error(f"--hierarchy={path}: not a regular file (a pipe, socket or device); pass a {_FORMAT}.")
        with open(fd, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise errors.Error(f"--hierarchy={path}: no such file; pass an existing {_FORMAT}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise errors.Error(
            f"--hierarchy={path}: unreadable ({errors.first_line(err)}); pass a UTF-8 text file."
        ) from err
    return _parse_json(path, text) if extension == ".json" else _parse_csv(path, text)


def _parse_json(path: str, text: str) -> dict:
    def no_duplicate_keys(pairs):
        keys = [key for key, _ in pairs]
        for key in keys:
            if keys.count(key) > 1:
                raise errors.Error(f"--hierarchy={path}: principal class {key!r} is a key twice; merge its lists.")
        return dict(pairs)

    try:
        tree = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise errors.Error(
            f"--hierarchy={path}: not valid JSON ({err.msg} at line {err.lineno} column "
            f"{err.colno}); the format is {_FORMAT}."
        ) from err
    if not isinstance(tree, dict) or not tree:
        raise errors.Error(f"--hierarchy={path}: the JSON must be a non-empty object: {_FORMAT}.")
    principal_of = {}
    for principal, children in tree.items():
        if not principal.strip():
            raise errors.Error(
                f"--hierarchy={path}: a principal class is named {principal!r}; give each principal class a name."
            )
        if not (isinstance(children, list) and children and all(isinstance(c, str) for c in children)):
            raise errors.Error(
                f"--hierarchy={path}: principal class {principal!r} must map to a "
                f"non-empty list of class names, not {json.dumps(children)[:60]}."
            )
        for child in children:
            if child in principal_of:
                where = (
                    "twice under " + repr(principal)
                    if principal_of[child] == principal
                    else f"under both {principal_of[child]!r} and {principal!r}"
                )
                raise errors.Error(f"--hierarchy={path}: class {child!r} is listed {where}; list each class once.")
            principal_of[child] = principal
    return principal_of


def _parse_csv(path: str, text: str) -> dict:
    principal_of, line_of = {}, {}
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        row = [cell.strip() for cell in row]
        if not any(row):
            continue
        if len(row) != 2 or not all(row):
            raise errors.Error(
                f"--hierarchy={path} line {line}: {','.join(row)!r} is not "
                "'fine class,principal class'; give each row two non-empty names."
            )
        child, principal = row
        if not principal_of and [child.lower(), principal.lower()] == ["fine", "principal"]:
            continue  # the optional header
        if child in principal_of:
            where = (
                "twice" if principal_of[child] == principal else f"under both {principal_of[child]!r} and {principal!r}"
            )
            raise errors.Error(
                f"--hierarchy={path} line {line}: class {child!r} is listed {where} "
                f"(first on line {line_of[child]}); list each class once."
            )
        principal_of[child], line_of[child] = principal, line
    if not principal_of:
        raise errors.Error(f"--hierarchy={path}: holds no rows; the format is {_FORMAT}.")
    return principal_of


def _check_classes(path: str, principal_of: dict, class_names: Sequence[str]) -> None:
    """The file must name exactly the data's classes."""
    known = set(class_names)
    unknown = [name for name in principal_of if name not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], class_names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise errors.Error(
            f"--hierarchy={path}: names {len(unknown)} class(es) the data does not have, "
            f"e.g. {unknown[0]!r}{hint}; use the data's class names "
            f"({_first(class_names)})."
        )
    missing = [name for name in class_names if name not in principal_of]
    if missing:
        raise errors.Error(
            f"--hierarchy={path}: leaves out {len(missing)} class(es) of the data "
            f"({_first(missing)}); put every class under a principal class."
        )


def _first(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(map(repr, names[:count]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > count else "")
