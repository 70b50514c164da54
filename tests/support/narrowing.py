"""Find reads of a narrowed attribute after a call, in code that mypyc compiles.

mypy narrows an attribute's declared type (`self.current: Exchange | None`) after an
assignment or a test (`self.current = None`, `if self.current is None:`) and keeps the narrower
type across calls, which may change the attribute meanwhile. Interpreted, nothing happens;
compiled, mypyc checks a read against the narrowed type and raises TypeError ("None object
expected; got Exchange"): the balancer's pipelining bug of issue 19 was exactly this.

The check is deliberately simple and conservative: in each function, statements are taken in
order (both branches of an `if`, the body of a loop twice, with its test after it); once an
attribute of a union type (`X | None`, `Optional`, `Union`) is assigned or tested, any call
makes a later read of it a finding. The remedy is to read such an attribute into a local
variable once, or to read it again only before any call.
"""

from __future__ import annotations

import ast
from pathlib import Path

Key = tuple[str, str]  # (the object's name, the attribute)


def _is_union(annotation: ast.expr) -> bool:
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return True
    if isinstance(annotation, ast.Subscript):
        name = ast.unparse(annotation.value)
        return name.rpartition(".")[2] in ("Optional", "Union")
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return _is_union(ast.parse(annotation.value, mode="eval").body)
    return False


def _class_name(annotation: ast.expr | None) -> str:
    """The class an annotation names, None left out of a union ("" if not one class)."""
    if annotation is None:
        return ""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        names = {_class_name(annotation.left), _class_name(annotation.right)} - {"None"}
        return names.pop() if len(names) == 1 else ""
    if isinstance(annotation, ast.Constant):
        return "None" if annotation.value is None else ""
    if isinstance(annotation, ast.Name | ast.Attribute):
        return ast.unparse(annotation).rpartition(".")[2]
    return ""


class Declarations:
    """Each class's attributes and their annotations, over all the modules."""

    def __init__(self, trees: list[ast.Module]) -> None:
        self.classes: dict[str, dict[str, ast.expr]] = {}
        self.any_union: set[str] = set()
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    attrs = self.classes.setdefault(node.name, {})
                    for child in ast.walk(node):
                        if isinstance(child, ast.Assign):  # self.x = … with no annotation
                            for target in child.targets:
                                if (isinstance(target, ast.Attribute)
                                        and isinstance(target.value, ast.Name)
                                        and target.value.id == "self"):
                                    attrs.setdefault(target.attr, ast.Name("object"))
                            continue
                        if not isinstance(child, ast.AnnAssign):
                            continue
                        target = child.target
                        name = (target.attr if isinstance(target, ast.Attribute)
                                else target.id if isinstance(target, ast.Name) else "")
                        if name:
                            attrs[name] = child.annotation  # the annotation wins
                            if _is_union(child.annotation):
                                self.any_union.add(name)

    def union(self, cls: str, attr: str) -> bool:
        """Is `attr` of a `cls` object a union? Unknown class: if any class declares one."""
        if cls in self.classes and attr in self.classes[cls]:
            return _is_union(self.classes[cls][attr])
        return attr in self.any_union

    def type_of(self, cls: str, attr: str) -> str:
        return _class_name(self.classes.get(cls, {}).get(attr))


class _Function:
    def __init__(self, declared: Declarations, where: str, cls: str,
                 node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.declared = declared
        self.where = where
        #: The class of each name, where it is known (self, annotated arguments, locals
        #: assigned from an attribute or a constructor).
        self.types: dict[str, str] = {}
        arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        for index, argument in enumerate(arguments):
            if index == 0 and argument.arg == "self" and cls:
                self.types["self"] = cls
            else:
                self.types[argument.arg] = _class_name(argument.annotation)
        self.narrowed: set[Key] = set()
        self.dirty: set[Key] = set()
        self.findings: list[str] = []

    def key(self, node: ast.expr) -> Key | None:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            base = node.value.id
            if self.declared.union(self.types.get(base, ""), node.attr):
                return base, node.attr
        return None

    def infer(self, name: str, value: ast.expr | None) -> None:
        """What class does a local hold after `name = value`?"""
        cls = ""
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
            cls = self.declared.type_of(self.types.get(value.value.id, ""), value.attr)
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            cls = value.func.id if value.func.id in self.declared.classes else ""
        self.types[name] = cls

    # -- walking, in execution order -------------------------------------------------------------
    def statements(self, body: list[ast.stmt]) -> None:
        for statement in body:
            self.statement(statement)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return  # walked on its own
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            if node.value is not None:
                self.expression(node.value)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    self.infer(target.id, node.value)
                self.assigned(target)
            return
        if isinstance(node, ast.If):
            self.test(node.test)
            self.statements(node.body)
            self.statements(node.orelse)
            return
        if isinstance(node, ast.While):
            for _ in range(2):  # a second turn: what the end of the body did to the test
                self.test(node.test)
                self.statements(node.body)
            self.statements(node.orelse)
            return
        if isinstance(node, ast.For | ast.AsyncFor):
            self.expression(node.iter)
            for _ in range(2):
                self.assigned(node.target)
                self.statements(node.body)
            self.statements(node.orelse)
            return
        if isinstance(node, ast.Try):
            self.statements(node.body)
            for handler in node.handlers:
                self.statements(handler.body)
            self.statements(node.orelse)
            self.statements(node.finalbody)
            return
        if isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                self.expression(item.context_expr)
            self.statements(node.body)
            return
        if isinstance(node, ast.Assert):
            self.test(node.test)
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expression(child)
            elif isinstance(child, ast.stmt):
                self.statement(child)

    def assigned(self, target: ast.expr) -> None:
        key = self.key(target)
        if key is not None:
            self.narrowed.add(key)
            self.dirty.discard(key)
        elif isinstance(target, ast.Name):  # a new object under that name
            self.narrowed = {k for k in self.narrowed if k[0] != target.id}
            self.dirty = {k for k in self.dirty if k[0] != target.id}
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self.assigned(element)
        elif isinstance(target, ast.Attribute | ast.Subscript):
            self.expression(target.value)

    def test(self, node: ast.expr) -> None:
        """A condition: what it reads is checked, then counts as narrowed."""
        self.expression(node)
        for child in ast.walk(node):
            if isinstance(child, ast.expr):
                key = self.key(child)
                if key is not None:
                    self.narrowed.add(key)

    def expression(self, node: ast.expr) -> None:
        if isinstance(node, ast.Lambda):
            return
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self.test(value)  # `a and b` narrows for b
            return
        if isinstance(node, ast.IfExp):
            self.test(node.test)
            self.expression(node.body)
            self.expression(node.orelse)
            return
        key = self.key(node)
        if key is not None and key in self.dirty:
            self.findings.append(f"{self.where}:{node.lineno}: {key[0]}.{key[1]} is read after "
                                 "a call, narrowed by an assignment or test before it")
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.expression(child)
        if isinstance(node, ast.Call | ast.Await):
            self.dirty |= self.narrowed


def findings(paths: list[Path]) -> list[str]:
    trees = [ast.parse(path.read_text(), str(path)) for path in paths]
    declared = Declarations(trees)
    found: list[str] = []
    for path, tree in zip(paths, trees, strict=True):
        for cls, node in _functions(tree):
            walker = _Function(declared, f"{path.name}:{node.name}", cls, node)
            walker.statements(node.body)
            found += walker.findings
    return found


def _functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function with the class it is a method of ("" if none)."""
    found: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []

    def visit(node: ast.AST, cls: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((cls, child))
                visit(child, "")
            else:
                visit(child, cls)

    visit(tree, "")
    return found
