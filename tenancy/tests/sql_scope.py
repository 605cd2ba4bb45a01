"""Which tenant tables a SQL statement touches without an ``organization_id`` condition.

A statement is routed by Citus to the one shard of an organization when every tenant table
it reads or writes is pinned to that organization: this is what the SQL capture of the
test suite (``tenancy.tests.sql_capture``) checks, on PostgreSQL's own grammar (pglast,
the parser of the PostgreSQL server, as a library).

A tenant table reference (``FROM``, ``JOIN``, the target of ``UPDATE`` / ``DELETE``) is
*scoped* when, among the conditions that must all hold (the ``AND``-ed terms of its
``WHERE`` and of the ``JOIN ... ON`` clauses), one is

* ``<ref>.organization_id = <value>``, ``IN (<values>)`` or ``= ANY(<value>)``, where a
  value is a parameter, a literal or any expression without a column; or
* ``<ref>.organization_id = <other>.organization_id`` where the other reference is scoped
  (a join inside one organization, or a subquery correlated to a scoped outer row).

An ``INSERT`` (``VALUES``, ``SELECT`` or ``unnest``) and a ``COPY ... FROM`` are scoped when
they write the ``organization_id`` column (Citus routes each row by it). Conditions under
``OR`` / ``NOT`` do not count. Subqueries, CTEs and ``UNION`` branches are checked as
queries of their own. Utility statements (``SET``, DDL, ``LOCK``, ``DO``...) are not
queries and are not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import pglast
from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType

ORG = "organization_id"

#: psycopg's placeholders: ``%s`` / ``%b`` / ``%t``, named ``%(name)s``, and ``%%``.
_PLACEHOLDER = re.compile(r"%(?:\(\w+\))?[sbt]|%%")


def to_postgres_sql(sql: str, params) -> str:
    """Django's / psycopg's SQL (``%s``, ``%b``, ``%(name)s`` placeholders, ``%%`` for
    ``%``) as PostgreSQL text with ``$1, $2...`` parameters, parseable by pglast. SQL sent
    without parameters is left as it is."""
    if params is None:
        return sql
    numbers = iter(range(1, 1_000_000))
    return _PLACEHOLDER.sub(lambda m: "%" if m.group(0) == "%%" else f"${next(numbers)}", sql)


@dataclass(eq=False)
class _Ref:
    table: str
    alias: str


@dataclass
class _Level:
    """One query level: its tenant references, and the links between them."""

    refs: list[_Ref] = field(default_factory=list)
    names: dict = field(default_factory=dict)  # alias or table name -> _Ref (tenant or not)
    pinned: set = field(default_factory=set)  # ids of refs with a constant condition
    edges: list = field(default_factory=list)  # (ref, ref) joined on organization_id
    parent: _Level | None = None
    scoped: set = field(default_factory=set)

    def resolve(self, column: ast.ColumnRef):
        """The reference an ``organization_id`` column belongs to (this level or an outer
        one), or ``None``."""
        names = [f.sval for f in column.fields if isinstance(f, ast.String)]
        if not names or names[-1] != ORG:
            return None
        level = self
        while level is not None:
            if len(names) >= 2:
                ref = level.names.get(names[-2])
                if ref is not None:
                    return ref
            else:
                tenant = [r for r in level.refs]
                if len(tenant) == 1:
                    return tenant[0]
                if tenant:
                    return None
            level = level.parent
        return None


def _has_column(node) -> bool:
    if isinstance(node, ast.ColumnRef):
        return True
    if isinstance(node, ast.SubLink):
        return True  # a value computed by a query is not a constant here
    if isinstance(node, (list, tuple)):
        return any(_has_column(n) for n in node)
    if isinstance(node, ast.Node):
        return any(_has_column(getattr(node, slot)) for slot in node.__slots__)
    return False


def _conjuncts(node) -> list:
    if node is None:
        return []
    if isinstance(node, ast.BoolExpr) and node.boolop == BoolExprType.AND_EXPR:
        return [c for arg in node.args for c in _conjuncts(arg)]
    return [node]


def _is_equals(expr) -> bool:
    return (
        isinstance(expr, ast.A_Expr)
        and len(expr.name) == 1
        and getattr(expr.name[0], "sval", None) == "="
    )


class _Analysis:
    def __init__(self, tenant_tables: frozenset[str]):
        self.tenant_tables = tenant_tables
        self.unscoped: set[str] = set()
        self.ctes: set[str] = set()

    # -- statements -------------------------------------------------------------
    def statement(self, stmt, parent: _Level | None = None) -> None:
        if isinstance(stmt, ast.SelectStmt):
            self.select(stmt, parent)
        elif isinstance(stmt, ast.InsertStmt):
            self.with_clause(stmt.withClause, parent)
            table = stmt.relation.relname
            columns = {c.name for c in stmt.cols or ()}
            if table in self.tenant_tables and ORG not in columns:
                self.unscoped.add(table)
            if stmt.selectStmt is not None:
                self.statement(stmt.selectStmt, parent)
        elif isinstance(stmt, (ast.UpdateStmt, ast.DeleteStmt)):
            self.with_clause(stmt.withClause, parent)
            extra = stmt.fromClause if isinstance(stmt, ast.UpdateStmt) else stmt.usingClause
            level = _Level(parent=parent)
            self.add_range(level, stmt.relation)
            conditions = []
            for item in extra or ():
                conditions += self.from_item(level, item)
            conditions += _conjuncts(stmt.whereClause)
            self.finish(level, conditions, [stmt.whereClause, getattr(stmt, "targetList", None)])
        elif isinstance(stmt, ast.CopyStmt):
            if stmt.query is not None:
                self.statement(stmt.query, parent)
            elif stmt.relation is not None and stmt.relation.relname in self.tenant_tables:
                columns = {getattr(c, "sval", None) for c in stmt.attlist or ()}
                if not stmt.is_from or ORG not in columns:
                    self.unscoped.add(stmt.relation.relname)
        elif isinstance(stmt, ast.ExplainStmt):
            self.statement(stmt.query, parent)

    def with_clause(self, clause, parent) -> None:
        for cte in getattr(clause, "ctes", None) or ():
            self.ctes.add(cte.ctename)
            self.statement(cte.ctequery, parent)

    def select(self, stmt: ast.SelectStmt, parent: _Level | None) -> None:
        self.with_clause(stmt.withClause, parent)
        if stmt.larg is not None or stmt.rarg is not None:
            for branch in (stmt.larg, stmt.rarg):
                if branch is not None:
                    self.select(branch, parent)
            return
        level = _Level(parent=parent)
        conditions = []
        for item in stmt.fromClause or ():
            conditions += self.from_item(level, item)
        conditions += _conjuncts(stmt.whereClause)
        self.finish(
            level,
            conditions,
            [stmt.whereClause, stmt.targetList, stmt.havingClause, stmt.sortClause],
        )

    # -- FROM ---------------------------------------------------------------------
    def add_range(self, level: _Level, rangevar: ast.RangeVar) -> None:
        name = rangevar.relname
        alias = rangevar.alias.aliasname if rangevar.alias is not None else name
        ref = _Ref(name, alias)
        level.names[alias] = ref
        if name in self.tenant_tables and name not in self.ctes:
            level.refs.append(ref)

    def from_item(self, level: _Level, item) -> list:
        """Register ``item``'s references in ``level``; return its JOIN conditions."""
        if isinstance(item, ast.RangeVar):
            self.add_range(level, item)
            return []
        if isinstance(item, ast.JoinExpr):
            conditions = self.from_item(level, item.larg) + self.from_item(level, item.rarg)
            return conditions + _conjuncts(item.quals)
        if isinstance(item, ast.RangeSubselect):
            self.statement(item.subquery, level if item.lateral else level.parent)
            if item.alias is not None:
                level.names[item.alias.aliasname] = _Ref("", item.alias.aliasname)
            return []
        if isinstance(item, ast.RangeFunction) and item.alias is not None:
            level.names[item.alias.aliasname] = _Ref("", item.alias.aliasname)
        return []

    # -- conditions ---------------------------------------------------------------
    def finish(self, level: _Level, conditions: list, expressions: list) -> None:
        for cond in conditions:
            self.condition(level, cond)
        scoped = set(level.pinned)
        changed = True
        while changed:
            changed = False
            for a, b in level.edges:
                for x, y in ((a, b), (b, a)):
                    if id(x) in scoped and id(y) not in scoped:
                        scoped.add(id(y))
                        changed = True
        level.scoped = scoped
        for ref in level.refs:
            if id(ref) not in scoped:
                self.unscoped.add(ref.table)
        for expression in expressions:
            self.sublinks(expression, level)

    def _outer_scoped(self, level: _Level, ref: _Ref) -> bool:
        outer = level.parent
        while outer is not None:
            if any(r is ref for r in outer.refs):
                return id(ref) in outer.scoped
            if any(r is ref for r in outer.names.values()):
                return False
            outer = outer.parent
        return False

    def condition(self, level: _Level, cond) -> None:
        if not isinstance(cond, ast.A_Expr):
            return
        kind = cond.kind
        sides = [cond.lexpr, cond.rexpr]
        if kind == A_Expr_Kind.AEXPR_OP and _is_equals(cond):
            refs = [level.resolve(s) if isinstance(s, ast.ColumnRef) else None for s in sides]
            for this, other, other_ref in (
                (refs[0], sides[1], refs[1]),
                (refs[1], sides[0], refs[0]),
            ):
                if this is None or not any(this is r for r in level.refs):
                    continue
                if other_ref is not None:
                    if any(other_ref is r for r in level.refs):
                        level.edges.append((this, other_ref))
                    elif self._outer_scoped(level, other_ref):
                        level.pinned.add(id(this))
                elif not _has_column(other):
                    level.pinned.add(id(this))
        elif kind in (A_Expr_Kind.AEXPR_IN, A_Expr_Kind.AEXPR_OP_ANY) and _is_equals(cond):
            if isinstance(cond.lexpr, ast.ColumnRef):
                ref = level.resolve(cond.lexpr)
                if ref is not None and any(ref is r for r in level.refs):
                    if not _has_column(cond.rexpr):
                        level.pinned.add(id(ref))

    def sublinks(self, node, level: _Level) -> None:
        if isinstance(node, ast.SubLink):
            self.statement(node.subselect, level)
            if node.testexpr is not None:
                self.sublinks(node.testexpr, level)
            return
        if isinstance(node, (list, tuple)):
            for n in node:
                self.sublinks(n, level)
        elif isinstance(node, ast.Node):
            for slot in node.__slots__:
                self.sublinks(getattr(node, slot), level)


@lru_cache(maxsize=20_000)
def unscoped_tables(sql: str, tenant_tables: frozenset[str]) -> frozenset[str]:
    """The tenant tables of ``sql`` (PostgreSQL text, ``$n`` parameters) that are read or
    written without an ``organization_id`` condition (module docstring). Empty for a
    statement that is scoped, touches no tenant table, or is not a query.

    Raises:
        pglast.parser.ParseError: ``sql`` is not valid PostgreSQL.
    """
    analysis = _Analysis(tenant_tables)
    for raw in pglast.parse_sql(sql):
        analysis.statement(raw.stmt)
    return frozenset(analysis.unscoped)
