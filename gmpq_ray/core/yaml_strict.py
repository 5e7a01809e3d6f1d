"""The YAML loader of :func:`gmpq_ray.core.config.load_yaml`: ``yaml.SafeLoader`` that refuses
duplicate keys and alias bombs. Its own module, so that ``core`` imports PyYAML only when it reads YAML.
"""

from __future__ import annotations

from typing import Any

import yaml

from gmpq_ray.core.config import MAX_YAML_NODES, short_repr
from gmpq_ray.core.errors import UserInputError


class _YAMLRefused(Exception):
    """Raised while loading: a duplicate key or an alias bomb (turned into a UserInputError)."""


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document would have with every alias expanded; refuses recursive aliases.

    Each node is counted once (memoized), so the check costs the size of the file, not of the
    expansion. Raises :class:`_YAMLRefused` past :data:`MAX_YAML_NODES`.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if finished:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                line = node.start_mark.line + 1
                raise _YAMLRefused(f"more than {MAX_YAML_NODES:,} values at line {line} (counting each repeat of an alias)")
            continue
        if id(node) in sizes:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise _YAMLRefused(f"a recursive alias at line {child.start_mark.line + 1} (a value contains itself)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and aliases expanding past a budget."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _YAMLRefused(f"duplicate key {short_repr(key)} at line {line} (first at line {seen[key]})")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml_text(text: str, source: str) -> Any:
    """YAML text through :class:`StrictLoader`; every problem is one :class:`UserInputError` naming ``source``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _YAMLRefused as err:
        raise UserInputError(f"{source}: {err}") from None
    except RecursionError:
        raise UserInputError(f"{source}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or getattr(err, "reason", None) or type(err).__name__
        raise UserInputError(f"{source}: not valid YAML{where} ({short_repr(str(problem))[1:-1]})") from None
