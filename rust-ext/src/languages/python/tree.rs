//! Complexity, nesting, end lines and Halstead counts in one walk of the AST,
//! with the rules of the Python reference (`aiswa_reflector.metrics._tree`), which
//! follow radon 6.0.1.
//!
//! The walk maps ruff's AST onto CPython's `ast` node types. An `elif` clause is an
//! `If` nested in the `orelse` of the previous one. A call's arguments and a dict's
//! items are fields of the node itself, and the parts of an f-string are the
//! `values` of a `JoinedStr`. The walk uses an explicit stack, not recursion.

use std::borrow::Cow;

use ruff_python_ast::{
    Alias, CmpOp, Comprehension, ElifElseClause, ExceptHandler, ExceptHandlerExceptHandler, Expr,
    FStringPart, InterpolatedElement, InterpolatedStringElement, InterpolatedStringElements,
    Keyword, MatchCase, ModModule, Operator, Parameter, Parameters, Pattern, Stmt, TypeParam,
    TypeParams, UnaryOp, WithItem,
};
use ruff_text_size::Ranged;
use rustc_hash::{FxHashMap, FxHashSet};

use super::lines::LineIndex;
use super::operands::{OperandKey, identifier, operand_key};
use crate::formulas::halstead_volume;
use crate::model::FunctionMetrics;

/// The deepest AST accepted, counting nodes as CPython's `ast` module nests them,
/// the module included. CPython 3.11 raises RecursionError above 3,000 less three
/// per Python frame of the caller, so ast.parse called 33 frames deep allows this.
pub const MAX_AST_DEPTH: u32 = 2_900;

pub struct TreeMetrics {
    pub functions: Vec<FunctionMetrics>,
    /// The file's total complexity as radon's `ComplexityVisitor.total_complexity`.
    pub total_complexity: u32,
    pub halstead_volume: f64,
}

#[derive(Debug)]
pub struct TooDeep;

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScopeKind {
    Module,
    Class,
    Function,
}

/// A module, class or function body, and what the walk counted in it.
struct Scope<'a> {
    kind: ScopeKind,
    name: Cow<'a, str>,
    qualified_name: String,
    parent: Option<usize>,
    children: Vec<usize>,
    decisions: u32,
    line_start: u32,
    column: u32,
    line_end: u32,
    max_nesting: u32,
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Stmt(&'a Stmt),
    Expr(&'a Expr),
    /// An `elif` clause, as the `If` that CPython nests in the previous `orelse`,
    /// followed by the clauses after it.
    Elif(&'a ElifElseClause, &'a [ElifElseClause]),
    Handler(&'a ExceptHandlerExceptHandler),
    Comprehension(&'a Comprehension),
    Keyword(&'a Keyword),
    Alias(&'a Alias),
    WithItem(&'a WithItem),
    MatchCase(&'a MatchCase),
    Pattern(&'a Pattern),
    Parameters(&'a Parameters),
    Parameter(&'a Parameter),
    TypeParam(&'a TypeParam),
    /// A `FormattedValue` of an f-string.
    Interpolation(&'a InterpolatedElement),
    /// A `JoinedStr` that is the format spec of an interpolation.
    FormatSpec(&'a InterpolatedStringElements),
}

/// A node to visit and its surroundings, as in the reference's walk.
#[derive(Clone, Copy)]
struct Item<'a> {
    node: Node<'a>,
    /// The innermost module, class or function that contains the node.
    scope: u32,
    /// The scope that its decision points count for, or None where radon counts none.
    complexity_scope: Option<u32>,
    /// The function whose end line the node's line can extend.
    end_scope: Option<u32>,
    /// The innermost function's name (interned), which Halstead operands carry.
    context: Option<u32>,
    /// How many block statements of its function contain the node.
    nesting: u32,
    /// The node's depth in CPython's AST, the module being 1.
    ast_depth: u32,
    /// False in function headers, which radon measures nothing of; they are only
    /// walked to check the AST depth.
    measured: bool,
}

struct Walker<'a> {
    source: &'a str,
    lines: &'a LineIndex,
    scopes: Vec<Scope<'a>>,
    functions: Vec<usize>,
    stack: Vec<Item<'a>>,
    context_names: FxHashMap<Cow<'a, str>, u32>,
    operators: u64,
    operands: u64,
    operator_names: u64,
    operand_keys: FxHashSet<(u32, OperandKey<'a>)>,
    unique_operands: u32,
    /// Set when a leaf that is not walked lies deeper than MAX_AST_DEPTH.
    too_deep: bool,
}

/// Walk `module` and compute its tree metrics.
pub fn scan_tree<'a>(
    module: &'a ModModule,
    source: &'a str,
    lines: &'a LineIndex,
) -> Result<TreeMetrics, TooDeep> {
    let mut walker = Walker {
        source,
        lines,
        scopes: vec![Scope {
            kind: ScopeKind::Module,
            name: Cow::Borrowed(""),
            qualified_name: String::new(),
            parent: None,
            children: Vec::new(),
            decisions: 0,
            line_start: 0,
            column: 0,
            line_end: 0,
            max_nesting: 0,
        }],
        functions: Vec::new(),
        stack: Vec::new(),
        context_names: FxHashMap::default(),
        operators: 0,
        operands: 0,
        operator_names: 0,
        operand_keys: FxHashSet::default(),
        unique_operands: 0,
        too_deep: false,
    };
    for stmt in module.body.iter().rev() {
        walker.stack.push(Item {
            node: Node::Stmt(stmt),
            scope: 0,
            complexity_scope: Some(0),
            end_scope: None,
            context: None,
            nesting: 0,
            ast_depth: 2,
            measured: true,
        });
    }
    while let Some(item) = walker.stack.pop() {
        if item.ast_depth > MAX_AST_DEPTH || walker.too_deep {
            return Err(TooDeep);
        }
        walker.visit(item);
    }
    if walker.too_deep {
        return Err(TooDeep);
    }
    Ok(walker.finish())
}

impl<'a> Walker<'a> {
    fn finish(self) -> TreeMetrics {
        let mut functions: Vec<&Scope> = self
            .functions
            .iter()
            .map(|&index| &self.scopes[index])
            .collect();
        functions.sort_by_key(|scope| (scope.line_start, scope.column));
        let functions = functions
            .into_iter()
            .map(|scope| FunctionMetrics {
                name: scope.name.to_string(),
                qualified_name: scope.qualified_name.clone(),
                is_method: scope
                    .parent
                    .is_some_and(|parent| self.scopes[parent].kind == ScopeKind::Class),
                line_start: scope.line_start,
                line_end: scope.line_end,
                cyclomatic_complexity: 1 + scope.decisions,
                max_nesting: scope.max_nesting,
                length: scope.line_end - scope.line_start + 1,
            })
            .collect();
        let module = &self.scopes[0];
        let mut total = 1 + module.decisions;
        for &child in &module.children {
            let child = &self.scopes[child];
            total += child.decisions;
            if child.kind == ScopeKind::Class {
                for &method in &child.children {
                    let method = &self.scopes[method];
                    if method.kind == ScopeKind::Function {
                        total += 1 + method.decisions;
                    }
                }
            }
        }
        let vocabulary = self.operator_names.count_ones() as u64 + self.operand_keys.len() as u64;
        TreeMetrics {
            functions,
            total_complexity: total,
            halstead_volume: halstead_volume(self.operators, self.operands, vocabulary),
        }
    }

    fn line(&self, offset: impl Into<usize>) -> u32 {
        self.lines.line_of(offset.into())
    }

    fn add_scope(
        &mut self,
        kind: ScopeKind,
        name: Cow<'a, str>,
        parent: u32,
        offset: usize,
    ) -> u32 {
        let parent_scope = &self.scopes[parent as usize];
        let qualified_name = if parent_scope.kind == ScopeKind::Module {
            name.to_string()
        } else {
            format!("{}.{}", parent_scope.qualified_name, name)
        };
        let line = self.line(offset);
        let column = self.lines.column_of(offset);
        let index = self.scopes.len();
        self.scopes.push(Scope {
            kind,
            name,
            qualified_name,
            parent: Some(parent as usize),
            children: Vec::new(),
            decisions: 0,
            line_start: line,
            column: column as u32,
            line_end: line,
            max_nesting: 0,
        });
        self.scopes[parent as usize].children.push(index);
        index as u32
    }

    fn intern_context(&mut self, name: Cow<'a, str>) -> u32 {
        let next = self.context_names.len() as u32;
        *self.context_names.entry(name).or_insert(next)
    }

    fn push(&mut self, parent: &Item<'a>, node: Node<'a>) {
        if let Node::Expr(expr) = node
            && is_leaf(expr)
        {
            // A leaf only extends the end line and the depth, so it skips the stack.
            if parent.ast_depth + 1 > MAX_AST_DEPTH {
                self.too_deep = true;
            }
            if parent.measured
                && let Some(end_scope) = parent.end_scope
            {
                let line = self.line(expr.start());
                let scope = &mut self.scopes[end_scope as usize];
                scope.line_end = scope.line_end.max(line);
            }
            return;
        }
        self.stack.push(Item {
            node,
            ast_depth: parent.ast_depth + 1,
            ..*parent
        });
    }

    fn visit(&mut self, item: Item<'a>) {
        if item.measured {
            match item.node {
                Node::Stmt(Stmt::FunctionDef(function)) => {
                    let name = identifier(function.name.as_str());
                    let scope = self.add_scope(
                        ScopeKind::Function,
                        name.clone(),
                        item.scope,
                        function.name.start().into(),
                    );
                    self.functions.push(scope as usize);
                    let context = self.intern_context(name);
                    let header = Item {
                        measured: false,
                        ..item
                    };
                    for decorator in &function.decorator_list {
                        self.push(&header, Node::Expr(&decorator.expression));
                    }
                    if let Some(type_params) = &function.type_params {
                        self.push_type_params(&header, type_params);
                    }
                    self.push(&header, Node::Parameters(&function.parameters));
                    if let Some(returns) = &function.returns {
                        self.push(&header, Node::Expr(returns));
                    }
                    let last = function.body.len().saturating_sub(1);
                    for (index, stmt) in function.body.iter().enumerate().rev() {
                        let body = Item {
                            scope,
                            complexity_scope: Some(scope),
                            end_scope: (index == last).then_some(scope),
                            context: Some(context),
                            nesting: 0,
                            ..item
                        };
                        self.push(&body, Node::Stmt(stmt));
                    }
                    return;
                }
                Node::Stmt(Stmt::ClassDef(class)) => {
                    let name = identifier(class.name.as_str());
                    let scope = self.add_scope(
                        ScopeKind::Class,
                        name,
                        item.scope,
                        class.name.start().into(),
                    );
                    // Bases, keywords and decorators: radon's Halstead visitor counts
                    // them in the enclosing context, its complexity visitor skips them.
                    let header = Item {
                        complexity_scope: None,
                        end_scope: None,
                        ..item
                    };
                    for decorator in &class.decorator_list {
                        self.push(&header, Node::Expr(&decorator.expression));
                    }
                    if let Some(type_params) = &class.type_params {
                        self.push_type_params(&header, type_params);
                    }
                    if let Some(arguments) = &class.arguments {
                        for base in arguments.args.iter() {
                            self.push(&header, Node::Expr(base));
                        }
                        for keyword in arguments.keywords.iter() {
                            self.push(&header, Node::Keyword(keyword));
                        }
                    }
                    for stmt in class.body.iter().rev() {
                        let body = Item {
                            scope,
                            complexity_scope: Some(scope),
                            end_scope: None,
                            nesting: 0,
                            ..item
                        };
                        self.push(&body, Node::Stmt(stmt));
                    }
                    return;
                }
                Node::Stmt(Stmt::Assert(assert)) => {
                    if let Some(scope) = item.complexity_scope {
                        self.scopes[scope as usize].decisions += 1;
                    }
                    let inside = Item {
                        complexity_scope: None,
                        end_scope: None,
                        ..item
                    };
                    self.push(&inside, Node::Expr(&assert.test));
                    if let Some(message) = &assert.msg {
                        self.push(&inside, Node::Expr(message));
                    }
                    return;
                }
                _ => {}
            }
            self.measure(&item);
        }
        let nesting = if item.measured && self.is_block(&item) {
            let scope = &mut self.scopes[item.scope as usize];
            scope.max_nesting = scope.max_nesting.max(item.nesting + 1);
            item.nesting + 1
        } else {
            item.nesting
        };
        self.push_children(&item, nesting);
    }

    fn is_block(&self, item: &Item) -> bool {
        let block = matches!(
            item.node,
            Node::Stmt(
                Stmt::If(_)
                    | Stmt::For(_)
                    | Stmt::While(_)
                    | Stmt::With(_)
                    | Stmt::Try(_)
                    | Stmt::Match(_)
            ) | Node::Elif(..)
        );
        block && self.scopes[item.scope as usize].kind == ScopeKind::Function
    }

    /// Update the end line, the decision points and the Halstead counts.
    fn measure(&mut self, item: &Item<'a>) {
        if let Some(end_scope) = item.end_scope
            && let Some(offset) = cpython_position(item.node)
        {
            let line = self.line(offset);
            let scope = &mut self.scopes[end_scope as usize];
            scope.line_end = scope.line_end.max(line);
        }
        if let Some(scope) = item.complexity_scope {
            self.scopes[scope as usize].decisions += decision_points(item.node);
        }
        self.count_halstead(item);
    }

    fn count_halstead(&mut self, item: &Item<'a>) {
        let context = item.context.unwrap_or(u32::MAX);
        match item.node {
            Node::Expr(Expr::BinOp(binary)) => {
                self.add_operator(operator_bit(binary.op));
                self.add_operands(context, [&*binary.left, &*binary.right]);
            }
            Node::Expr(Expr::UnaryOp(unary)) => {
                self.add_operator(unary_operator_bit(unary.op));
                self.add_operands(context, [&*unary.operand]);
            }
            Node::Expr(Expr::BoolOp(boolean)) => {
                let bit = match boolean.op {
                    ruff_python_ast::BoolOp::And => BIT_AND,
                    ruff_python_ast::BoolOp::Or => BIT_OR,
                };
                self.add_operator(bit);
                self.add_operands(context, boolean.values.iter());
            }
            Node::Stmt(Stmt::AugAssign(assign)) => {
                self.add_operator(operator_bit(assign.op));
                self.add_operands(context, [&*assign.target, &*assign.value]);
            }
            Node::Expr(Expr::Compare(compare)) => {
                for op in compare.ops.iter() {
                    self.add_operator(compare_operator_bit(*op));
                }
                self.add_operands(context, compare.comparators.iter().chain([&*compare.left]));
            }
            _ => {}
        }
    }

    fn add_operator(&mut self, bit: u64) {
        self.operators += 1;
        self.operator_names |= bit;
    }

    fn add_operands(&mut self, context: u32, operands: impl IntoIterator<Item = &'a Expr>) {
        for operand in operands {
            self.operands += 1;
            let key = operand_key(operand, self.source).unwrap_or_else(|| {
                self.unique_operands += 1;
                OperandKey::Unique(self.unique_operands)
            });
            self.operand_keys.insert((context, key));
        }
    }

    fn push_type_params(&mut self, parent: &Item<'a>, type_params: &'a TypeParams) {
        for type_param in type_params.iter() {
            self.push(parent, Node::TypeParam(type_param));
        }
    }

    fn push_body(&mut self, parent: &Item<'a>, body: &'a [Stmt]) {
        for stmt in body.iter().rev() {
            self.push(parent, Node::Stmt(stmt));
        }
    }

    fn push_expr(&mut self, parent: &Item<'a>, expr: &'a Expr) {
        self.push(parent, Node::Expr(expr));
    }

    fn push_exprs(&mut self, parent: &Item<'a>, exprs: impl DoubleEndedIterator<Item = &'a Expr>) {
        for expr in exprs.rev() {
            self.push(parent, Node::Expr(expr));
        }
    }

    fn push_optional(&mut self, parent: &Item<'a>, expr: Option<&'a Expr>) {
        if let Some(expr) = expr {
            self.push(parent, Node::Expr(expr));
        }
    }

    /// Push the node's children as CPython's AST has them.
    fn push_children(&mut self, item: &Item<'a>, nesting: u32) {
        let child = Item { nesting, ..*item };
        let parent = &child;
        match item.node {
            Node::Stmt(stmt) => self.push_stmt_children(parent, item, stmt),
            Node::Expr(expr) => self.push_expr_children(parent, expr),
            Node::Elif(clause, rest) => {
                if let Some(test) = &clause.test {
                    self.push_expr(parent, test);
                }
                self.push_body(parent, &clause.body);
                self.push_else_clauses(parent, item, rest);
            }
            Node::Handler(handler) => {
                self.push_optional(parent, handler.type_.as_deref());
                self.push_body(parent, &handler.body);
            }
            Node::Comprehension(comprehension) => {
                self.push_expr(parent, &comprehension.target);
                self.push_expr(parent, &comprehension.iter);
                self.push_exprs(parent, comprehension.ifs.iter());
            }
            Node::Keyword(keyword) => self.push_expr(parent, &keyword.value),
            Node::Alias(_) => {}
            Node::WithItem(with_item) => {
                self.push_expr(parent, &with_item.context_expr);
                self.push_optional(parent, with_item.optional_vars.as_deref());
            }
            Node::MatchCase(case) => {
                self.push(parent, Node::Pattern(&case.pattern));
                self.push_optional(parent, case.guard.as_deref());
                self.push_body(parent, &case.body);
            }
            Node::Pattern(pattern) => self.push_pattern_children(parent, pattern),
            Node::Parameters(parameters) => {
                for parameter in parameters.iter() {
                    self.push(parent, Node::Parameter(parameter.as_parameter()));
                }
                for parameter in parameters.iter_non_variadic_params() {
                    self.push_optional(parent, parameter.default.as_deref());
                }
            }
            Node::Parameter(parameter) => {
                self.push_optional(parent, parameter.annotation.as_deref())
            }
            Node::TypeParam(type_param) => match type_param {
                TypeParam::TypeVar(var) => {
                    self.push_optional(parent, var.bound.as_deref());
                    self.push_optional(parent, var.default.as_deref());
                }
                TypeParam::TypeVarTuple(var) => self.push_optional(parent, var.default.as_deref()),
                TypeParam::ParamSpec(spec) => self.push_optional(parent, spec.default.as_deref()),
            },
            Node::Interpolation(interpolation) => {
                self.push_expr(parent, &interpolation.expression);
                if let Some(spec) = &interpolation.format_spec {
                    self.push(parent, Node::FormatSpec(&spec.elements));
                }
            }
            Node::FormatSpec(elements) => self.push_interpolated(parent, elements),
        }
    }

    /// Push what follows an `if` or `elif` body: the next `elif` as a nested `If`
    /// at the nesting of its `if`, or the `else` body.
    fn push_else_clauses(
        &mut self,
        parent: &Item<'a>,
        item: &Item<'a>,
        clauses: &'a [ElifElseClause],
    ) {
        let Some((first, rest)) = clauses.split_first() else {
            return;
        };
        if first.test.is_some() {
            let elif = Item {
                nesting: item.nesting,
                ..*parent
            };
            self.push(&elif, Node::Elif(first, rest));
        } else {
            self.push_body(parent, &first.body);
        }
    }

    fn push_stmt_children(&mut self, parent: &Item<'a>, item: &Item<'a>, stmt: &'a Stmt) {
        match stmt {
            Stmt::FunctionDef(function) => {
                // Only reached in a function header, to check the AST depth.
                for decorator in &function.decorator_list {
                    self.push_expr(parent, &decorator.expression);
                }
                self.push(parent, Node::Parameters(&function.parameters));
                self.push_optional(parent, function.returns.as_deref());
                self.push_body(parent, &function.body);
            }
            Stmt::ClassDef(class) => {
                for decorator in &class.decorator_list {
                    self.push_expr(parent, &decorator.expression);
                }
                if let Some(arguments) = &class.arguments {
                    self.push_exprs(parent, arguments.args.iter());
                    for keyword in arguments.keywords.iter() {
                        self.push(parent, Node::Keyword(keyword));
                    }
                }
                self.push_body(parent, &class.body);
            }
            Stmt::Return(ret) => self.push_optional(parent, ret.value.as_deref()),
            Stmt::Delete(delete) => self.push_exprs(parent, delete.targets.iter()),
            Stmt::TypeAlias(alias) => {
                self.push_expr(parent, &alias.name);
                if let Some(type_params) = &alias.type_params {
                    self.push_type_params(parent, type_params);
                }
                self.push_expr(parent, &alias.value);
            }
            Stmt::Assign(assign) => {
                self.push_exprs(parent, assign.targets.iter());
                self.push_expr(parent, &assign.value);
            }
            Stmt::AugAssign(assign) => {
                self.push_expr(parent, &assign.target);
                self.push_expr(parent, &assign.value);
            }
            Stmt::AnnAssign(assign) => {
                self.push_expr(parent, &assign.target);
                self.push_expr(parent, &assign.annotation);
                self.push_optional(parent, assign.value.as_deref());
            }
            Stmt::For(for_stmt) => {
                self.push_expr(parent, &for_stmt.target);
                self.push_expr(parent, &for_stmt.iter);
                self.push_body(parent, &for_stmt.body);
                self.push_body(parent, &for_stmt.orelse);
            }
            Stmt::While(while_stmt) => {
                self.push_expr(parent, &while_stmt.test);
                self.push_body(parent, &while_stmt.body);
                self.push_body(parent, &while_stmt.orelse);
            }
            Stmt::If(if_stmt) => {
                self.push_expr(parent, &if_stmt.test);
                self.push_body(parent, &if_stmt.body);
                self.push_else_clauses(parent, item, &if_stmt.elif_else_clauses);
            }
            Stmt::With(with) => {
                for with_item in with.items.iter().rev() {
                    self.push(parent, Node::WithItem(with_item));
                }
                self.push_body(parent, &with.body);
            }
            Stmt::Match(match_stmt) => {
                self.push_expr(parent, &match_stmt.subject);
                for case in match_stmt.cases.iter().rev() {
                    self.push(parent, Node::MatchCase(case));
                }
            }
            Stmt::Raise(raise) => {
                self.push_optional(parent, raise.exc.as_deref());
                self.push_optional(parent, raise.cause.as_deref());
            }
            Stmt::Try(try_stmt) => {
                self.push_body(parent, &try_stmt.body);
                for handler in try_stmt.handlers.iter().rev() {
                    let ExceptHandler::ExceptHandler(handler) = handler;
                    self.push(parent, Node::Handler(handler));
                }
                self.push_body(parent, &try_stmt.orelse);
                self.push_body(parent, &try_stmt.finalbody);
            }
            Stmt::Assert(assert) => {
                self.push_expr(parent, &assert.test);
                self.push_optional(parent, assert.msg.as_deref());
            }
            Stmt::Import(import) => {
                for alias in import.names.iter().rev() {
                    self.push(parent, Node::Alias(alias));
                }
            }
            Stmt::ImportFrom(import) => {
                for alias in import.names.iter().rev() {
                    self.push(parent, Node::Alias(alias));
                }
            }
            Stmt::Expr(expr) => self.push_expr(parent, &expr.value),
            Stmt::Global(_)
            | Stmt::Nonlocal(_)
            | Stmt::Pass(_)
            | Stmt::Break(_)
            | Stmt::Continue(_)
            | Stmt::IpyEscapeCommand(_) => {}
        }
    }

    fn push_expr_children(&mut self, parent: &Item<'a>, expr: &'a Expr) {
        match expr {
            Expr::BoolOp(boolean) => self.push_exprs(parent, boolean.values.iter()),
            Expr::Named(named) => {
                self.push_expr(parent, &named.target);
                self.push_expr(parent, &named.value);
            }
            Expr::BinOp(binary) => {
                self.push_expr(parent, &binary.left);
                self.push_expr(parent, &binary.right);
            }
            Expr::UnaryOp(unary) => self.push_expr(parent, &unary.operand),
            Expr::Lambda(lambda) => {
                if let Some(parameters) = &lambda.parameters {
                    self.push(parent, Node::Parameters(parameters));
                } else {
                    // CPython has an empty `arguments` node even without parameters.
                    self.check_leaf(parent);
                }
                self.push_expr(parent, &lambda.body);
            }
            Expr::If(if_expr) => {
                self.push_expr(parent, &if_expr.test);
                self.push_expr(parent, &if_expr.body);
                self.push_expr(parent, &if_expr.orelse);
            }
            Expr::Dict(dict) => {
                for item in dict.items.iter().rev() {
                    self.push_optional(parent, item.key.as_ref());
                    self.push_expr(parent, &item.value);
                }
            }
            Expr::Set(set) => self.push_exprs(parent, set.elts.iter()),
            Expr::ListComp(comp) => {
                self.push_expr(parent, &comp.elt);
                self.push_comprehensions(parent, &comp.generators);
            }
            Expr::SetComp(comp) => {
                self.push_expr(parent, &comp.elt);
                self.push_comprehensions(parent, &comp.generators);
            }
            Expr::DictComp(comp) => {
                self.push_optional(parent, comp.key.as_deref());
                self.push_expr(parent, &comp.value);
                self.push_comprehensions(parent, &comp.generators);
            }
            Expr::Generator(generator) => {
                self.push_expr(parent, &generator.elt);
                self.push_comprehensions(parent, &generator.generators);
            }
            Expr::Await(await_expr) => self.push_expr(parent, &await_expr.value),
            Expr::Yield(yield_expr) => self.push_optional(parent, yield_expr.value.as_deref()),
            Expr::YieldFrom(yield_from) => self.push_expr(parent, &yield_from.value),
            Expr::Compare(compare) => {
                self.push_expr(parent, &compare.left);
                self.push_exprs(parent, compare.comparators.iter());
            }
            Expr::Call(call) => {
                self.push_expr(parent, &call.func);
                self.push_exprs(parent, call.arguments.args.iter());
                for keyword in call.arguments.keywords.iter().rev() {
                    self.push(parent, Node::Keyword(keyword));
                }
            }
            Expr::FString(fstring) => {
                for part in fstring.value.iter().rev() {
                    match part {
                        FStringPart::Literal(_) => self.check_leaf(parent),
                        FStringPart::FString(inner) => {
                            self.push_interpolated(parent, &inner.elements)
                        }
                    }
                }
            }
            Expr::TString(tstring) => {
                for inner in tstring.value.iter().rev() {
                    self.push_interpolated(parent, &inner.elements);
                }
            }
            Expr::Attribute(attribute) => self.push_expr(parent, &attribute.value),
            Expr::Subscript(subscript) => {
                self.push_expr(parent, &subscript.value);
                self.push_expr(parent, &subscript.slice);
            }
            Expr::Starred(starred) => self.push_expr(parent, &starred.value),
            Expr::List(list) => self.push_exprs(parent, list.elts.iter()),
            Expr::Tuple(tuple) => self.push_exprs(parent, tuple.elts.iter()),
            Expr::Slice(slice) => {
                self.push_optional(parent, slice.lower.as_deref());
                self.push_optional(parent, slice.upper.as_deref());
                self.push_optional(parent, slice.step.as_deref());
            }
            Expr::StringLiteral(_)
            | Expr::BytesLiteral(_)
            | Expr::NumberLiteral(_)
            | Expr::BooleanLiteral(_)
            | Expr::NoneLiteral(_)
            | Expr::EllipsisLiteral(_)
            | Expr::Name(_)
            | Expr::IpyEscapeCommand(_) => {}
        }
    }

    fn push_comprehensions(&mut self, parent: &Item<'a>, generators: &'a [Comprehension]) {
        for comprehension in generators.iter().rev() {
            self.push(parent, Node::Comprehension(comprehension));
        }
    }

    /// Push the `values` of a `JoinedStr`: a `FormattedValue` per interpolation and a
    /// `Constant` per literal part.
    fn push_interpolated(&mut self, parent: &Item<'a>, elements: &'a InterpolatedStringElements) {
        for element in elements.iter().rev() {
            match element {
                InterpolatedStringElement::Interpolation(interpolation) => {
                    self.push(parent, Node::Interpolation(interpolation));
                }
                InterpolatedStringElement::Literal(_) => self.check_leaf(parent),
            }
        }
    }

    /// Account for a leaf child that is not walked, such as an f-string's literal
    /// part, in the AST depth check.
    fn check_leaf(&mut self, parent: &Item<'a>) {
        if parent.ast_depth + 1 > MAX_AST_DEPTH {
            self.too_deep = true;
        }
    }

    fn push_pattern_children(&mut self, parent: &Item<'a>, pattern: &'a Pattern) {
        match pattern {
            Pattern::MatchValue(value) => self.push_expr(parent, &value.value),
            Pattern::MatchSingleton(_) | Pattern::MatchStar(_) => {}
            Pattern::MatchSequence(sequence) => {
                for inner in sequence.patterns.iter().rev() {
                    self.push(parent, Node::Pattern(inner));
                }
            }
            Pattern::MatchMapping(mapping) => {
                self.push_exprs(parent, mapping.keys.iter());
                for inner in mapping.patterns.iter().rev() {
                    self.push(parent, Node::Pattern(inner));
                }
            }
            Pattern::MatchClass(class) => {
                self.push_expr(parent, &class.cls);
                for inner in class.arguments.patterns.iter().rev() {
                    self.push(parent, Node::Pattern(inner));
                }
                for keyword in class.arguments.keywords.iter().rev() {
                    self.push(parent, Node::Pattern(&keyword.pattern));
                }
            }
            Pattern::MatchAs(as_pattern) => {
                if let Some(inner) = &as_pattern.pattern {
                    self.push(parent, Node::Pattern(inner));
                }
            }
            Pattern::MatchOr(or_pattern) => {
                for inner in or_pattern.patterns.iter().rev() {
                    self.push(parent, Node::Pattern(inner));
                }
            }
        }
    }
}

/// Returns whether `expr` has no children, so that the walk has nothing to do for it
/// but to note its line and depth.
fn is_leaf(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Name(_)
            | Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::BytesLiteral(_)
            | Expr::BooleanLiteral(_)
            | Expr::NoneLiteral(_)
            | Expr::EllipsisLiteral(_)
    )
}

/// Returns the offset whose line CPython reports as the node's `lineno`. Returns
/// None for nodes without one (comprehension, withitem, match_case, arguments) and
/// for the parts of an f-string, whose `lineno` is that of the whole f-string.
fn cpython_position(node: Node) -> Option<usize> {
    let offset = match node {
        Node::Stmt(stmt) => stmt.start(),
        Node::Expr(expr) => expr.start(),
        Node::Elif(clause, _) => clause.start(),
        Node::Handler(handler) => handler.start(),
        Node::Keyword(keyword) => keyword.start(),
        Node::Alias(alias) => alias.start(),
        Node::Pattern(pattern) => pattern.start(),
        Node::Parameter(parameter) => parameter.start(),
        Node::TypeParam(type_param) => type_param.start(),
        Node::Comprehension(_)
        | Node::WithItem(_)
        | Node::MatchCase(_)
        | Node::Parameters(_)
        | Node::Interpolation(_)
        | Node::FormatSpec(_) => return None,
    };
    Some(offset.into())
}

/// Decision points per node type, as the reference counts them: radon 6.0.1's
/// rules plus `try`/`except*`, which radon does not count.
fn decision_points(node: Node) -> u32 {
    match node {
        Node::Stmt(Stmt::Try(try_stmt)) => {
            try_stmt.handlers.len() as u32 + u32::from(!try_stmt.orelse.is_empty())
        }
        Node::Expr(Expr::BoolOp(boolean)) => boolean.values.len() as u32 - 1,
        Node::Stmt(Stmt::If(_)) | Node::Elif(..) | Node::Expr(Expr::If(_)) => 1,
        Node::Stmt(Stmt::Match(match_stmt)) => {
            // radon subtracts one case when any case is a bare capture or wildcard
            // (`case _:`, `case x:`), with or without a guard.
            let catch_all = match_stmt
                .cases
                .iter()
                .any(|case| matches!(&case.pattern, Pattern::MatchAs(as_pattern) if as_pattern.pattern.is_none()));
            (match_stmt.cases.len() as u32).saturating_sub(u32::from(catch_all))
        }
        Node::Stmt(Stmt::For(for_stmt)) => 1 + u32::from(!for_stmt.orelse.is_empty()),
        Node::Stmt(Stmt::While(while_stmt)) => 1 + u32::from(!while_stmt.orelse.is_empty()),
        Node::Comprehension(comprehension) => 1 + comprehension.ifs.len() as u32,
        _ => 0,
    }
}

// Operators are distinct by their CPython AST class name; each name has a bit.
const BIT_AND: u64 = 1 << 0;
const BIT_OR: u64 = 1 << 1;

fn operator_bit(op: Operator) -> u64 {
    let index = match op {
        Operator::Add => 2,
        Operator::Sub => 3,
        Operator::Mult => 4,
        Operator::MatMult => 5,
        Operator::Div => 6,
        Operator::Mod => 7,
        Operator::Pow => 8,
        Operator::LShift => 9,
        Operator::RShift => 10,
        Operator::BitOr => 11,
        Operator::BitXor => 12,
        Operator::BitAnd => 13,
        Operator::FloorDiv => 14,
    };
    1 << index
}

fn unary_operator_bit(op: UnaryOp) -> u64 {
    let index = match op {
        UnaryOp::Invert => 15,
        UnaryOp::Not => 16,
        UnaryOp::UAdd => 17,
        UnaryOp::USub => 18,
    };
    1 << index
}

fn compare_operator_bit(op: CmpOp) -> u64 {
    let index = match op {
        CmpOp::Eq => 19,
        CmpOp::NotEq => 20,
        CmpOp::Lt => 21,
        CmpOp::LtE => 22,
        CmpOp::Gt => 23,
        CmpOp::GtE => 24,
        CmpOp::Is => 25,
        CmpOp::IsNot => 26,
        CmpOp::In => 27,
        CmpOp::NotIn => 28,
    };
    1 << index
}
