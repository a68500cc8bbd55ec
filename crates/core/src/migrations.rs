//! The migration classifier: which SQL statements old code survives, which break it, and
//! which destroy data.
//!
//! Owns splitting a PostgreSQL migration into statements (with their lines), parsing
//! each with a real SQL parser (`sqlparser`, PostgreSQL dialect), the rules, their
//! stable names, and reviewer annotations. Pure: text in, a report out. It must not run
//! SQL.
//!
//! Classes, from safe to unsafe:
//! - `expand`: backward compatible; the running (old) code keeps working.
//! - `contract`: the old code breaks (a column it reads is gone or renamed, a write it
//!   makes is now rejected). Rolling back the code after this needs the schema back.
//! - `irreversible`: data is destroyed; rolling back the code cannot bring it back.
//!
//! Lock risks (warnings) are separate from the class: they say how the migration may
//! block production while it runs, not whether old code survives it.

use std::collections::HashSet;
use std::fmt;

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, DropBehavior, DropDomain, Expr,
    Insert, ObjectName, ObjectNamePart, ObjectType, OnConflict, OnConflictAction, OnInsert, Query,
    ReferentialAction, SetExpr, Statement, TableConstraint, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// How a migration affects the code that is running.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Backward compatible.
    Expand,
    /// Breaks the old code.
    Contract,
    /// Destroys data.
    Irreversible,
}

impl Class {
    /// `expand`, `contract` or `irreversible`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Expand => "expand",
            Class::Contract => "contract",
            Class::Irreversible => "irreversible",
        }
    }

    /// The exit code of `rampart migrations check` for this overall class.
    pub fn exit_code(self) -> i32 {
        match self {
            Class::Expand => 0,
            Class::Contract => 3,
            Class::Irreversible => 4,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule: a stable name, the class it implies (or `None` for a lock warning), and
/// what it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Stable, kebab-case name; documented in docs/migrations.md.
    pub name: &'static str,
    /// The class, or `None` for a lock-risk warning.
    pub class: Option<Class>,
    /// One line of explanation.
    pub summary: &'static str,
}

macro_rules! rules {
    ($($id:ident = $name:literal, $class:expr, $summary:literal;)*) => {
        $(#[doc = $summary] pub const $id: Rule = Rule { name: $name, class: $class, summary: $summary };)*
        /// Every rule, in documentation order.
        pub const RULES: &[Rule] = &[$($id),*];
    };
}

rules! {
    ADD_TABLE = "add-table", Some(Class::Expand), "A new table: old code does not know it and is not affected.";
    ADD_NULLABLE_COLUMN = "add-nullable-column", Some(Class::Expand), "A new nullable column, or one with a default or generated: old inserts still work.";
    ADD_INDEX = "add-index", Some(Class::Expand), "A new index: queries only get faster.";
    ADD_CONSTRAINT = "add-constraint", Some(Class::Expand), "A new CHECK, UNIQUE or foreign key: old code keeps working if its writes satisfy it.";
    DROP_INDEX = "drop-index", Some(Class::Expand), "An index dropped: queries may slow down, none fails.";
    DROP_CONSTRAINT = "drop-constraint", Some(Class::Expand), "A constraint dropped: the schema accepts more, old code still works.";
    DROP_NOT_NULL = "drop-not-null", Some(Class::Expand), "A column made nullable: old code still works.";
    SET_DEFAULT = "set-default", Some(Class::Expand), "A default set or changed: old inserts still work.";
    ADD_VIEW = "add-view", Some(Class::Expand), "A new view or function: old code does not use it.";
    NO_SCHEMA_CHANGE = "no-schema-change", Some(Class::Expand), "A statement that changes no schema (SET, BEGIN, COMMIT, COMMENT, GRANT, INSERT).";
    ADD_NOT_NULL_COLUMN = "add-not-null-column-without-default", Some(Class::Contract), "A NOT NULL column without a default: old inserts that do not name it fail.";
    SET_NOT_NULL = "set-not-null", Some(Class::Contract), "An existing column made NOT NULL: old writes that leave it empty fail.";
    DROP_DEFAULT = "drop-default", Some(Class::Contract), "A default dropped: old inserts that relied on it fail or store NULL.";
    CHANGE_COLUMN_TYPE = "change-column-type", Some(Class::Contract), "A column's type changed: old code may read or write the wrong type.";
    RENAME_COLUMN = "rename-column", Some(Class::Contract), "A column renamed: old code still uses the old name.";
    RENAME_TABLE = "rename-table", Some(Class::Contract), "A table renamed: old code still uses the old name.";
    DROP_VIEW = "drop-view", Some(Class::Contract), "A view or function dropped: old code that uses it fails.";
    REPLACE_VIEW = "replace-view", Some(Class::Contract), "A view or function replaced (OR REPLACE): old code that uses it gets the new definition.";
    UNRECOGNISED = "unrecognised-statement", Some(Class::Contract), "A statement rampart does not classify: treated as breaking until a reviewer marks it safe.";
    RUNS_NEW_FUNCTION = "runs-new-function", Some(Class::Contract), "A statement that calls a function or procedure the same migration created: its body is not classified, so it is treated as breaking until a reviewer marks it safe.";
    DROP_COLUMN = "drop-column", Some(Class::Irreversible), "A column dropped: its data is gone, and old code that reads it fails.";
    DROP_TABLE = "drop-table", Some(Class::Irreversible), "A table (or schema, or database) dropped: its data is gone.";
    DROP_CASCADE = "drop-type-cascade", Some(Class::Irreversible), "A type, domain or extension dropped with CASCADE: every column of its types goes with it, and its data.";
    TRUNCATE = "truncate", Some(Class::Irreversible), "A table emptied: its data is gone.";
    DELETE_ROWS = "delete-rows", Some(Class::Irreversible), "Rows deleted: their data is gone.";
    UPDATE_ROWS = "update-rows", Some(Class::Irreversible), "Rows overwritten: the old values are gone (mark backfills of new columns safe).";
    INDEX_WITHOUT_CONCURRENTLY = "index-without-concurrently", None, "CREATE or DROP INDEX without CONCURRENTLY blocks writes to the table while it runs.";
    CONSTRAINT_WITHOUT_NOT_VALID = "constraint-without-not-valid", None, "A CHECK or foreign key added without NOT VALID scans the table under a lock; add it NOT VALID, then VALIDATE CONSTRAINT.";
    TABLE_REWRITE = "table-rewrite", None, "Changing a column's type rewrites the table under an exclusive lock.";
    SET_NOT_NULL_SCAN = "set-not-null-scan", None, "SET NOT NULL scans the table under an exclusive lock; add a NOT VALID CHECK (col IS NOT NULL) and validate it first.";
    MISSING_LOCK_TIMEOUT = "missing-lock-timeout", None, "DDL that takes an exclusive lock without a `SET lock_timeout` earlier in the file can queue behind a long query and block everything behind it.";
}

/// One statement's verdict.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StatementReport {
    /// Line of the statement's first token, from 1.
    pub line: u64,
    /// The statement's class (after any reviewer annotation).
    pub class: Class,
    /// Names of the class rules that matched.
    pub rules: Vec<&'static str>,
    /// Names of the lock-risk rules that matched.
    pub warnings: Vec<&'static str>,
    /// The first line of the statement, for people.
    pub sql: String,
    /// A reviewer's `-- rampart:safe REASON` annotation, if any: the statement counts
    /// as `expand`, and the reason is kept for the audit trail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe: Option<String>,
}

/// A migration that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SqlError {
    /// Line of the problem, from 1 (0 when the parser did not say).
    pub line: u64,
    /// The parser's message.
    pub message: String,
}

/// The annotation a reviewer writes on the line(s) just above a statement.
pub const SAFE_ANNOTATION: &str = "rampart:safe";

/// Classifies every statement of one migration file.
pub fn classify(sql: &str) -> Result<Vec<StatementReport>, SqlError> {
    classify_with(sql, &mut HashSet::new())
}

/// [`classify`] of one file of several applied in order: `functions` holds the
/// functions and procedures the files before it created (upper case, without their
/// schema), and gets this file's.
pub fn classify_with(
    sql: &str,
    functions: &mut HashSet<String>,
) -> Result<Vec<StatementReport>, SqlError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError {
            line: e.location.line,
            message: e.message.clone(),
        })?;
    // Split at top-level semicolons, remembering each statement's first line, its text
    // and the comments just before it.
    struct Chunk {
        line: u64,
        notes: Vec<String>,
        /// Byte offsets of its text in `sql`, as written: a token printed again is
        /// not always what was written (a string's doubled quote comes back single,
        /// and what follows it reads differently).
        from: usize,
        to: usize,
        words: Vec<String>,
        /// Names (upper case) written just before a `(`: the functions it may call.
        calls: Vec<String>,
        /// Whether its last token, whitespace and comments aside, is a word.
        after_word: bool,
    }
    let mut at = Offsets::of(sql);
    let mut chunks: Vec<Chunk> = Vec::new();
    // Comments between two statements, with their first and last lines; one on the
    // line of the `;` before them is about that statement, and is not kept.
    let mut comments: Vec<Comment> = Vec::new();
    let mut ended_on = 0;
    let mut current: Option<Chunk> = None;
    for t in &tokens {
        let start = t.span.start.line;
        match &t.token {
            Token::Whitespace(Whitespace::SingleLineComment { comment, .. })
                if current.is_none() =>
            {
                if start != ended_on {
                    comments.push(Comment {
                        first: start,
                        last: start,
                        text: comment.trim().to_string(),
                    });
                }
            }
            Token::Whitespace(Whitespace::MultiLineComment(c)) if current.is_none() => {
                if start != ended_on {
                    comments.push(Comment {
                        first: start,
                        last: t.span.end.line,
                        text: c.trim().to_string(),
                    });
                }
            }
            Token::Whitespace(_) if current.is_none() => {}
            Token::SemiColon => {
                chunks.extend(current.take());
                comments.clear();
                ended_on = start;
            }
            token => {
                let chunk = current.get_or_insert_with(|| Chunk {
                    line: start,
                    notes: just_above(std::mem::take(&mut comments), start),
                    from: at.byte(t.span.start),
                    to: 0,
                    words: Vec::new(),
                    calls: Vec::new(),
                    after_word: false,
                });
                chunk.to = at.byte(t.span.end);
                match token {
                    Token::LParen if chunk.after_word => {
                        chunk.calls.extend(chunk.words.last().cloned());
                    }
                    Token::Word(w) => chunk.words.push(w.value.to_ascii_uppercase()),
                    _ => {}
                }
                if !matches!(token, Token::Whitespace(_)) {
                    chunk.after_word = matches!(token, Token::Word(_));
                }
            }
        }
    }
    chunks.extend(current);
    // Each statement is parsed on its own, so that a PostgreSQL form the parser lacks
    // can be recognised from its words instead of failing the whole file.
    let mut statements = Vec::with_capacity(chunks.len());
    for c in &chunks {
        let text = sql.get(c.from..c.to.max(c.from)).unwrap_or_default();
        match Parser::new(&dialect)
            .try_with_sql(text)
            .and_then(|mut p| whole_statement(&mut p))
        {
            Ok(stmt) => statements.push(Parsed::Statement(Box::new(stmt))),
            Err(e) => match recognise(&c.words) {
                Some(rule) => statements.push(Parsed::Recognised(rule, text.to_string())),
                None => {
                    let message = e.to_string();
                    let offset: u64 = message
                        .split("Line: ")
                        .nth(1)
                        .and_then(|rest| rest.split(|ch: char| !ch.is_ascii_digit()).next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1);
                    return Err(SqlError {
                        line: c.line + offset.saturating_sub(1),
                        message,
                    });
                }
            },
        }
    }
    let chunks: Vec<(u64, Vec<String>, Vec<String>)> = chunks
        .into_iter()
        .map(|c| (c.line, c.notes, c.calls))
        .collect();
    let mut created: HashSet<String> = HashSet::new();

    let mut lock_timeout = false;
    let mut out = Vec::new();
    for (parsed, (line, notes, calls)) in statements.iter().zip(chunks) {
        let mut f = Findings::default();
        // What such a call runs is the function's body, which is not read here. A
        // statement about the function (a grant, a comment, another overload, its
        // drop) names it without running it.
        let about_functions = matches!(
            parsed,
            Parsed::Statement(stmt) if matches!(
                &**stmt,
                Statement::Grant(_)
                    | Statement::Revoke(_)
                    | Statement::Comment { .. }
                    | Statement::CreateFunction(_)
                    | Statement::CreateProcedure { .. }
                    | Statement::DropFunction(_)
                    | Statement::DropProcedure { .. }
            )
        );
        if !about_functions && calls.iter().any(|c| functions.contains(c)) {
            f.add(RUNS_NEW_FUNCTION);
        }
        let text = match parsed {
            Parsed::Statement(stmt) => {
                judge(stmt, &mut f, &mut created, &mut lock_timeout);
                let made = match &**stmt {
                    Statement::CreateFunction(c) => Some(&c.name),
                    Statement::CreateProcedure { name, .. } => Some(name),
                    _ => None,
                };
                if let Some(ObjectNamePart::Identifier(id)) = made.and_then(|n| n.0.last()) {
                    functions.insert(id.value.to_ascii_uppercase());
                }
                stmt.to_string()
            }
            Parsed::Recognised(rule, text) => {
                f.add(*rule);
                text.clone()
            }
        };
        let class = f.class();
        let safe = notes.iter().rev().find_map(|n| annotation_reason(n));
        let first: String = text
            .trim()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect();
        out.push(StatementReport {
            line,
            class: if safe.as_deref().is_some_and(|r| !r.is_empty()) {
                Class::Expand
            } else {
                class
            },
            rules: f.rules.iter().map(|r| r.name).collect(),
            warnings: f.warnings.iter().map(|r| r.name).collect(),
            sql: first,
            safe: safe.filter(|r| !r.is_empty()),
        });
    }
    Ok(out)
}

/// Turns the tokenizer's locations (lines, and columns counted in characters, from 1)
/// into byte offsets. Locations asked in order cost one pass over the text in all: a
/// file of one long line is not scanned again for each of its tokens.
struct Offsets<'a> {
    text: &'a str,
    /// The last location asked, and its byte offset.
    line: u64,
    column: u64,
    byte: usize,
}

impl<'a> Offsets<'a> {
    fn of(text: &'a str) -> Offsets<'a> {
        Offsets {
            text,
            line: 1,
            column: 1,
            byte: 0,
        }
    }

    /// The byte offset of `loc` (the text's end when past it).
    fn byte(&mut self, loc: sqlparser::tokenizer::Location) -> usize {
        if (loc.line, loc.column) < (self.line, self.column) {
            (self.line, self.column, self.byte) = (1, 1, 0);
        }
        let mut chars = self.text[self.byte..].chars();
        while (self.line, self.column) < (loc.line, loc.column) {
            let Some(c) = chars.next() else {
                self.byte = self.text.len();
                return self.byte;
            };
            // What the tokenizer counts: a new line at `\n`, else one column.
            if c == '\n' {
                (self.line, self.column) = (self.line + 1, 1);
            } else {
                self.column += 1;
            }
            self.byte += c.len_utf8();
        }
        self.byte
    }
}

/// A comment between statements, with its first and last lines.
struct Comment {
    first: u64,
    last: u64,
    text: String,
}

/// The comments of the block that ends on the line just above `line` (or on it): a
/// blank line, or a statement, ends a block.
fn just_above(comments: Vec<Comment>, line: u64) -> Vec<String> {
    let mut next = line;
    let mut keep = comments.len();
    for c in comments.iter().rev() {
        if c.last + 1 < next {
            break;
        }
        next = c.first;
        keep -= 1;
    }
    comments.into_iter().skip(keep).map(|c| c.text).collect()
}

/// One statement, which must be the whole of the text: a parser that stops at a clause
/// it does not know would leave the rest of the statement (another `ALTER TABLE`
/// operation, say) unread, and unclassified.
fn whole_statement(p: &mut Parser<'_>) -> Result<Statement, ParserError> {
    let statement = p.parse_statement()?;
    let rest = p.peek_token();
    if rest.token == Token::EOF {
        return Ok(statement);
    }
    // `CREATE MATERIALIZED VIEW ... WITH [NO] DATA`: whether it is filled now.
    if matches!(&statement, Statement::CreateView(v) if v.materialized) {
        let mut words = Vec::new();
        while let Token::Word(w) = p.next_token().token {
            words.push(w.value.to_ascii_uppercase());
        }
        let at_end = p.peek_token().token == Token::EOF;
        if at_end && (words == ["WITH", "DATA"] || words == ["WITH", "NO", "DATA"]) {
            return Ok(statement);
        }
    }
    Err(ParserError::ParserError(format!(
        "rampart's SQL parser stops at `{}` and cannot classify the rest of the statement (Line: {}, Column: {})",
        rest.token, rest.span.start.line, rest.span.start.column
    )))
}

/// An annotation without a reason is not honoured: the reason is what the audit keeps.
pub fn unexplained_annotations(sql: &str) -> Vec<u64> {
    sql.lines()
        .enumerate()
        .filter(|(_, l)| {
            l.trim()
                .strip_prefix("--")
                .and_then(annotation_reason)
                .is_some_and(|r| r.is_empty())
        })
        .map(|(i, _)| i as u64 + 1)
        .collect()
}

/// The reason of a comment that is a `rampart:safe` annotation (empty when it gives
/// none), or `None`. The word must be whole: `rampart:safeguard` is no annotation.
fn annotation_reason(comment: &str) -> Option<String> {
    let rest = comment.trim().strip_prefix(SAFE_ANNOTATION)?;
    if rest.starts_with(|c: char| !(c.is_whitespace() || c == ':')) {
        return None;
    }
    Some(rest.trim().trim_start_matches(':').trim().to_string())
}

/// The worst class of a set of statements (`expand` for none).
pub fn worst(statements: &[StatementReport]) -> Class {
    statements
        .iter()
        .map(|s| s.class)
        .max()
        .unwrap_or(Class::Expand)
}

/// One migration file's verdict.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileReport {
    /// The file.
    pub path: String,
    /// Its worst statement's class.
    pub class: Class,
    /// Every statement.
    pub statements: Vec<StatementReport>,
}

impl FileReport {
    /// The verdict on the file at `path` with these classified statements.
    pub fn new(path: String, statements: Vec<StatementReport>) -> FileReport {
        FileReport {
            path,
            class: worst(&statements),
            statements,
        }
    }
}

/// The verdict on a set of migration files.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// The worst class over all files.
    pub class: Class,
    /// Each file, in the order checked.
    pub files: Vec<FileReport>,
}

impl CheckReport {
    /// The verdict on these files, in this order.
    pub fn new(files: Vec<FileReport>) -> CheckReport {
        CheckReport {
            class: files.iter().map(|f| f.class).max().unwrap_or(Class::Expand),
            files,
        }
    }
}

/// A statement as parsed, or as recognised from its words when the parser lacks it.
enum Parsed {
    Statement(Box<Statement>),
    Recognised(Rule, String),
}

/// PostgreSQL forms the SQL parser does not know, recognised by their leading words.
fn recognise(words: &[String]) -> Option<Rule> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["DROP", "INDEX", "CONCURRENTLY", ..] => Some(DROP_INDEX),
        ["REINDEX", ..] => Some(ADD_INDEX),
        ["REFRESH", "MATERIALIZED", "VIEW", ..] => Some(NO_SCHEMA_CHANGE),
        _ => None,
    }
}

#[derive(Default)]
struct Findings {
    rules: Vec<Rule>,
    warnings: Vec<Rule>,
}

impl Findings {
    fn add(&mut self, rule: Rule) {
        let list = if rule.class.is_some() {
            &mut self.rules
        } else {
            &mut self.warnings
        };
        if !list.contains(&rule) {
            list.push(rule);
        }
    }

    fn class(&self) -> Class {
        self.rules
            .iter()
            .filter_map(|r| r.class)
            .max()
            .unwrap_or(Class::Expand)
    }
}

/// A table's name as PostgreSQL resolves it: unquoted parts fold to lower case, quoted
/// ones keep theirs (`"Orders"` and `orders` are two tables).
fn name_of(n: &ObjectName) -> String {
    let parts: Vec<String> =
        n.0.iter()
            .map(|part| match part {
                ObjectNamePart::Identifier(id) if id.quote_style.is_some() => id.value.clone(),
                ObjectNamePart::Identifier(id) => id.value.to_ascii_lowercase(),
                other => other.to_string(),
            })
            .collect();
    parts.join(".")
}

/// The rows a query changes through its `WITH` (a data-modifying CTE: `WITH d AS
/// (DELETE ... RETURNING *) INSERT INTO archive SELECT * FROM d`), or its body.
fn modifies(q: &Query, f: &mut Findings) {
    for cte in q.with.iter().flat_map(|w| &w.cte_tables) {
        modifies(&cte.query, f);
    }
    body_modifies(&q.body, f);
}

fn body_modifies(body: &SetExpr, f: &mut Findings) {
    match body {
        SetExpr::Delete(_) => f.add(DELETE_ROWS),
        SetExpr::Update(_) | SetExpr::Merge(_) => f.add(UPDATE_ROWS),
        SetExpr::Insert(Statement::Insert(i)) => inserts(i, f),
        SetExpr::Query(q) => modifies(q, f),
        SetExpr::SetOperation { left, right, .. } => {
            body_modifies(left, f);
            body_modifies(right, f);
        }
        _ => {}
    }
}

/// An `INSERT`: new rows, unless `ON CONFLICT ... DO UPDATE` overwrites existing ones.
fn inserts(i: &Insert, f: &mut Findings) {
    if matches!(
        &i.on,
        Some(OnInsert::OnConflict(OnConflict {
            action: OnConflictAction::DoUpdate(_),
            ..
        })) | Some(OnInsert::DuplicateKeyUpdate(_))
    ) {
        f.add(UPDATE_ROWS);
    }
    if let Some(source) = &i.source {
        modifies(source, f);
    }
}

/// Whether a `SET` leaves a lock timeout in force: `0` and `DEFAULT` turn it off.
fn sets_lock_timeout(set: &str) -> Option<bool> {
    let lower = set.to_ascii_lowercase();
    let (_, value) = lower.split_once("lock_timeout")?;
    let value = value.trim_start();
    let value = value
        .strip_prefix('=')
        .or_else(|| value.strip_prefix("to "))
        .unwrap_or(value)
        .trim()
        .trim_matches(['\'', '"', ' ']);
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    let off = value.is_empty()
        || value == "default"
        || (!digits.is_empty() && digits.chars().all(|c| c == '0') && !value.contains('.'));
    Some(!off)
}

fn judge(
    stmt: &Statement,
    f: &mut Findings,
    created: &mut HashSet<String>,
    lock_timeout: &mut bool,
) {
    match stmt {
        Statement::CreateTable(t) => {
            // IF NOT EXISTS on a table that exists does nothing: it is not new.
            if !t.if_not_exists {
                created.insert(name_of(&t.name));
            }
            f.add(ADD_TABLE);
            if let Some(query) = &t.query {
                modifies(query, f);
            }
        }
        Statement::CreateIndex(i) => {
            f.add(ADD_INDEX);
            if !i.concurrently && !created.contains(&name_of(&i.table_name)) {
                f.add(INDEX_WITHOUT_CONCURRENTLY);
            }
        }
        Statement::CreateView(v) if v.or_replace || v.or_alter => f.add(REPLACE_VIEW),
        Statement::CreateFunction(c) if c.or_replace || c.or_alter => f.add(REPLACE_VIEW),
        Statement::CreateView { .. }
        | Statement::CreateFunction(_)
        | Statement::CreateSequence { .. }
        | Statement::CreateType { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateExtension(_) => f.add(ADD_VIEW),
        Statement::AlterTable(a) => {
            let table = name_of(&a.name);
            let fresh = created.contains(&table);
            let mut exclusive = false;
            for op in &a.operations {
                alter(op, f, fresh, &mut exclusive);
            }
            if exclusive && !fresh && !*lock_timeout {
                f.add(MISSING_LOCK_TIMEOUT);
            }
        }
        Statement::Drop {
            object_type: ObjectType::Type,
            cascade: true,
            ..
        }
        | Statement::DropDomain(DropDomain {
            drop_behavior: Some(DropBehavior::Cascade),
            ..
        }) => f.add(DROP_CASCADE),
        Statement::DropExtension(e)
            if matches!(e.cascade_or_restrict, Some(ReferentialAction::Cascade)) =>
        {
            f.add(DROP_CASCADE)
        }
        Statement::Drop { object_type, .. } => match object_type {
            ObjectType::Table
            | ObjectType::Schema
            | ObjectType::Database
            | ObjectType::MaterializedView => f.add(DROP_TABLE),
            ObjectType::Index => {
                f.add(DROP_INDEX);
                f.add(INDEX_WITHOUT_CONCURRENTLY);
            }
            ObjectType::View | ObjectType::Sequence | ObjectType::Type => f.add(DROP_VIEW),
            _ => f.add(UNRECOGNISED),
        },
        Statement::DropFunction(_) => f.add(DROP_VIEW),
        Statement::Truncate(_) => f.add(TRUNCATE),
        Statement::Delete(_) => f.add(DELETE_ROWS),
        Statement::Update(_) | Statement::Merge(_) => f.add(UPDATE_ROWS),
        Statement::Set(set) => {
            if let Some(on) = sets_lock_timeout(&set.to_string()) {
                *lock_timeout = on;
            }
            f.add(NO_SCHEMA_CHANGE);
        }
        Statement::Insert(i) => {
            f.add(NO_SCHEMA_CHANGE);
            inserts(i, f);
        }
        Statement::Query(q) => {
            f.add(NO_SCHEMA_CHANGE);
            modifies(q, f);
        }
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Comment { .. }
        | Statement::Grant(_)
        | Statement::Analyze(_) => f.add(NO_SCHEMA_CHANGE),
        _ => f.add(UNRECOGNISED),
    }
}

/// A default PostgreSQL computes anew for each row (so adding it fills every row).
fn volatile(value: &Expr) -> bool {
    let text = value.to_string().to_ascii_lowercase();
    [
        "clock_timestamp(",
        "random(",
        "gen_random_uuid(",
        "uuid_generate_v",
        "timeofday(",
        "nextval(",
    ]
    .iter()
    .any(|f| text.contains(f))
}

/// `NULL`, or `NULL` cast to a type.
fn is_null(value: &Expr) -> bool {
    match value {
        Expr::Value(v) => matches!(v.value, Value::Null),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => is_null(expr),
        _ => false,
    }
}

fn alter(op: &AlterTableOperation, f: &mut Findings, fresh: bool, exclusive: &mut bool) {
    match op {
        AlterTableOperation::AddColumn { column_def, .. } => {
            let not_null = column_def
                .options
                .iter()
                .any(|o| matches!(o.option, ColumnOption::NotNull));
            // PostgreSQL fills a generated column itself, as it does a default: old
            // code never writes it, so its inserts still work.
            let default = column_def.options.iter().any(|o| {
                matches!(
                    o.option,
                    ColumnOption::Default(_) | ColumnOption::Generated { .. }
                )
            });
            f.add(if not_null && !default && !fresh {
                ADD_NOT_NULL_COLUMN
            } else {
                ADD_NULLABLE_COLUMN
            });
            // A value computed for every existing row rewrites the table: a stored
            // generated column, an identity or serial column, a volatile default.
            let serial = matches!(
                column_def
                    .data_type
                    .to_string()
                    .to_ascii_lowercase()
                    .as_str(),
                "serial" | "bigserial" | "smallserial" | "serial4" | "serial8" | "serial2"
            );
            let rewrites = serial
                || column_def.options.iter().any(|o| match &o.option {
                    ColumnOption::Generated { .. } => true,
                    ColumnOption::Default(e) => volatile(e),
                    _ => false,
                });
            if rewrites && !fresh {
                f.add(TABLE_REWRITE);
            }
            *exclusive = true;
        }
        AlterTableOperation::DropColumn { .. } => {
            f.add(DROP_COLUMN);
            *exclusive = true;
        }
        AlterTableOperation::RenameColumn { .. } => {
            f.add(RENAME_COLUMN);
            *exclusive = true;
        }
        AlterTableOperation::RenameTable { .. } => {
            f.add(RENAME_TABLE);
            *exclusive = true;
        }
        AlterTableOperation::AlterColumn { op, .. } => {
            *exclusive = true;
            match op {
                AlterColumnOperation::SetNotNull => {
                    f.add(SET_NOT_NULL);
                    if !fresh {
                        f.add(SET_NOT_NULL_SCAN);
                    }
                }
                AlterColumnOperation::DropNotNull => f.add(DROP_NOT_NULL),
                // DEFAULT NULL is no default: DROP DEFAULT by another name.
                AlterColumnOperation::SetDefault { value } if is_null(value) => {
                    f.add(DROP_DEFAULT);
                }
                AlterColumnOperation::SetDefault { .. } => f.add(SET_DEFAULT),
                AlterColumnOperation::DropDefault => f.add(DROP_DEFAULT),
                AlterColumnOperation::SetDataType { .. } => {
                    f.add(CHANGE_COLUMN_TYPE);
                    if !fresh {
                        f.add(TABLE_REWRITE);
                    }
                }
                _ => f.add(UNRECOGNISED),
            }
        }
        AlterTableOperation::AddConstraint {
            constraint,
            not_valid,
        } => {
            f.add(ADD_CONSTRAINT);
            *exclusive = true;
            // A primary key makes its columns NOT NULL.
            if matches!(constraint, TableConstraint::PrimaryKey(_)) && !fresh {
                f.add(SET_NOT_NULL);
                f.add(SET_NOT_NULL_SCAN);
            }
            // A primary key or unique constraint builds its index under the lock
            // (`USING INDEX` adopts one built CONCURRENTLY before).
            if matches!(
                constraint,
                TableConstraint::PrimaryKey(_) | TableConstraint::Unique(_)
            ) && !fresh
            {
                f.add(INDEX_WITHOUT_CONCURRENTLY);
            }
            let scans = matches!(
                constraint,
                TableConstraint::Check(_) | TableConstraint::ForeignKey(_)
            );
            if scans && !not_valid && !fresh {
                f.add(CONSTRAINT_WITHOUT_NOT_VALID);
            }
        }
        AlterTableOperation::ValidateConstraint { .. } => f.add(ADD_CONSTRAINT),
        AlterTableOperation::DropConstraint { .. } => {
            f.add(DROP_CONSTRAINT);
            *exclusive = true;
        }
        _ => f.add(UNRECOGNISED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> StatementReport {
        let mut r = classify(sql).unwrap();
        assert_eq!(r.len(), 1, "{sql}");
        r.remove(0)
    }

    #[test]
    fn expand_statements() {
        for sql in [
            "CREATE TABLE t (id bigint primary key)",
            "ALTER TABLE t ADD COLUMN note text",
            "ALTER TABLE t ADD COLUMN n int NOT NULL DEFAULT 0",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "ALTER TABLE t ALTER COLUMN a DROP NOT NULL",
            "SET lock_timeout = '2s'",
        ] {
            assert_eq!(one(sql).class, Class::Expand, "{sql}: {:?}", one(sql));
        }
    }

    #[test]
    fn a_column_filled_for_every_row_warns_of_a_table_rewrite() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c timestamptz DEFAULT clock_timestamp()",
            "ALTER TABLE t ADD COLUMN c uuid DEFAULT gen_random_uuid()",
            "ALTER TABLE t ADD COLUMN c bigserial",
            "ALTER TABLE t ADD COLUMN c int GENERATED ALWAYS AS (a * 2) STORED",
            "ALTER TABLE t ADD COLUMN c bigint GENERATED BY DEFAULT AS IDENTITY",
        ] {
            let r = one(sql);
            assert!(r.warnings.contains(&"table-rewrite"), "{sql}: {r:?}");
            assert_eq!(r.class, Class::Expand, "{sql}: {r:?}");
        }
        // A constant or a stable default is stored once, for all rows at once.
        for sql in [
            "ALTER TABLE t ADD COLUMN c int DEFAULT 0",
            "ALTER TABLE t ADD COLUMN c timestamptz DEFAULT now()",
        ] {
            assert!(!one(sql).warnings.contains(&"table-rewrite"), "{sql}");
        }
    }

    #[test]
    fn a_unique_or_primary_key_constraint_builds_its_index_under_the_lock() {
        for sql in [
            "ALTER TABLE t ADD CONSTRAINT u UNIQUE (a)",
            "ALTER TABLE t ADD PRIMARY KEY (id)",
        ] {
            let r = one(sql);
            assert!(
                r.warnings.contains(&"index-without-concurrently"),
                "{sql}: {r:?}"
            );
        }
        let r = one("ALTER TABLE t ADD CONSTRAINT u UNIQUE USING INDEX i");
        assert!(!r.warnings.contains(&"index-without-concurrently"), "{r:?}");
    }

    #[test]
    fn generated_columns_are_expand_with_or_without_not_null() {
        // PostgreSQL computes a generated column itself (old code cannot write it), so
        // old inserts that do not name it keep working, NOT NULL or not.
        for sql in [
            "ALTER TABLE t ADD COLUMN total int GENERATED ALWAYS AS (a + b) STORED",
            "ALTER TABLE t ADD COLUMN total int GENERATED ALWAYS AS (a + b) STORED NOT NULL",
            "ALTER TABLE t ADD COLUMN total int NOT NULL GENERATED ALWAYS AS (a + b) STORED",
        ] {
            let r = one(sql);
            assert_eq!(r.class, Class::Expand, "{sql}: {r:?}");
            assert_eq!(r.rules, vec!["add-nullable-column"], "{sql}: {r:?}");
        }
    }

    #[test]
    fn contract_statements() {
        for (sql, rule) in [
            (
                "ALTER TABLE t ADD COLUMN n int NOT NULL",
                "add-not-null-column-without-default",
            ),
            ("ALTER TABLE t RENAME COLUMN a TO b", "rename-column"),
            ("ALTER TABLE t RENAME TO u", "rename-table"),
            (
                "ALTER TABLE t ALTER COLUMN a TYPE bigint",
                "change-column-type",
            ),
            ("ALTER TABLE t ALTER COLUMN a SET NOT NULL", "set-not-null"),
            ("ALTER TABLE t ALTER COLUMN a DROP DEFAULT", "drop-default"),
            ("DROP VIEW v", "drop-view"),
        ] {
            let r = one(sql);
            assert_eq!(r.class, Class::Contract, "{sql}: {r:?}");
            assert!(r.rules.contains(&rule), "{sql}: {r:?}");
        }
    }

    #[test]
    fn irreversible_statements() {
        for (sql, rule) in [
            ("ALTER TABLE t DROP COLUMN a", "drop-column"),
            ("DROP TABLE t", "drop-table"),
            ("DROP DATABASE shop", "drop-table"),
            ("TRUNCATE t", "truncate"),
            ("DELETE FROM t WHERE a < 5", "delete-rows"),
            ("UPDATE t SET a = 1", "update-rows"),
        ] {
            let r = one(sql);
            assert_eq!(r.class, Class::Irreversible, "{sql}: {r:?}");
            assert!(r.rules.contains(&rule), "{sql}: {r:?}");
        }
    }

    #[test]
    fn lock_risks_are_warnings() {
        let r = one("CREATE INDEX i ON t (a)");
        assert_eq!(
            (r.class, r.warnings.clone()),
            (Class::Expand, vec!["index-without-concurrently"])
        );
        let r = one("ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES users (id)");
        assert!(
            r.warnings.contains(&"constraint-without-not-valid"),
            "{r:?}"
        );
        assert!(r.warnings.contains(&"missing-lock-timeout"), "{r:?}");
        let r = classify("SET lock_timeout = '1s';\nALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES users (id) NOT VALID;").unwrap();
        assert!(r[1].warnings.is_empty(), "{r:?}");
        // A table created in the same file is empty: no lock risk, no contract.
        let r = classify("CREATE TABLE t (id int);\nCREATE INDEX i ON t (id);\nALTER TABLE t ADD COLUMN n int NOT NULL;").unwrap();
        assert!(
            r.iter()
                .all(|s| s.warnings.is_empty() && s.class == Class::Expand),
            "{r:?}"
        );
    }

    #[test]
    fn lines_and_annotations() {
        let sql = "-- migration 42\nCREATE TABLE a (id int);\n\n-- rampart:safe backfill of the new column, reviewed by dana\nUPDATE a SET id = 1;\nDELETE FROM a;\n";
        let r = classify(sql).unwrap();
        assert_eq!(r.iter().map(|s| s.line).collect::<Vec<_>>(), vec![2, 5, 6]);
        assert_eq!(r[1].class, Class::Expand);
        assert_eq!(
            r[1].safe.as_deref(),
            Some("backfill of the new column, reviewed by dana")
        );
        assert_eq!(
            r[1].rules,
            vec!["update-rows"],
            "the rule is still reported"
        );
        assert_eq!(
            r[2].class,
            Class::Irreversible,
            "an annotation covers one statement"
        );
        assert_eq!(worst(&r), Class::Irreversible);
        assert_eq!(
            unexplained_annotations("-- rampart:safe\nDELETE FROM a;"),
            vec![1]
        );
        let r = classify("-- rampart:safe\nDELETE FROM a;").unwrap();
        assert_eq!(r[0].class, Class::Irreversible, "no reason, no exception");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let e = classify("CREATE TABLE a (id int);\nALTER TABLE a ADD COLUMN;\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(classify("SELECT 'unterminated").is_err());
    }

    #[test]
    fn dollar_quoted_bodies_with_semicolons_stay_one_statement() {
        let sql = "CREATE FUNCTION f() RETURNS int AS $$ BEGIN RETURN 1; END; $$ LANGUAGE plpgsql;\nDROP TABLE old;";
        let r = classify(sql).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].line, 2);
        assert_eq!(r[1].class, Class::Irreversible);
    }
}

#[cfg(test)]
mod rule_cases {
    use super::*;

    /// Every rule with SQL that must trigger it and SQL that must not.
    const CASES: &[(&str, &str, &str)] = &[
        (
            "add-table",
            "CREATE TABLE coupons (id int)",
            "CREATE VIEW v AS SELECT 1",
        ),
        (
            "add-nullable-column",
            "ALTER TABLE t ADD COLUMN c text",
            "ALTER TABLE t ADD COLUMN c text NOT NULL",
        ),
        (
            "add-index",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "DROP INDEX CONCURRENTLY i",
        ),
        (
            "add-constraint",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID",
            "ALTER TABLE t DROP CONSTRAINT c",
        ),
        (
            "drop-index",
            "DROP INDEX CONCURRENTLY i",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
        ),
        (
            "drop-constraint",
            "ALTER TABLE t DROP CONSTRAINT c",
            "ALTER TABLE t ADD CONSTRAINT c UNIQUE (a)",
        ),
        (
            "drop-not-null",
            "ALTER TABLE t ALTER COLUMN a DROP NOT NULL",
            "ALTER TABLE t ALTER COLUMN a SET NOT NULL",
        ),
        (
            "set-default",
            "ALTER TABLE t ALTER COLUMN a SET DEFAULT 0",
            "ALTER TABLE t ALTER COLUMN a DROP DEFAULT",
        ),
        ("add-view", "CREATE VIEW v AS SELECT 1", "DROP VIEW v"),
        ("no-schema-change", "SET lock_timeout = '1s'", "TRUNCATE t"),
        (
            "add-not-null-column-without-default",
            "ALTER TABLE t ADD COLUMN c int NOT NULL",
            "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 1",
        ),
        (
            "set-not-null",
            "ALTER TABLE t ALTER COLUMN a SET NOT NULL",
            "ALTER TABLE t ALTER COLUMN a DROP NOT NULL",
        ),
        (
            "drop-default",
            "ALTER TABLE t ALTER COLUMN a DROP DEFAULT",
            "ALTER TABLE t ALTER COLUMN a SET DEFAULT 1",
        ),
        (
            "change-column-type",
            "ALTER TABLE t ALTER COLUMN a TYPE bigint",
            "ALTER TABLE t ALTER COLUMN a SET DEFAULT 1",
        ),
        (
            "rename-column",
            "ALTER TABLE t RENAME COLUMN a TO b",
            "ALTER TABLE t RENAME TO u",
        ),
        (
            "rename-table",
            "ALTER TABLE t RENAME TO u",
            "ALTER TABLE t RENAME COLUMN a TO b",
        ),
        ("drop-view", "DROP VIEW v", "CREATE VIEW v AS SELECT 1"),
        (
            "replace-view",
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "CREATE VIEW v AS SELECT 1",
        ),
        (
            "unrecognised-statement",
            "ALTER TABLE t OWNER TO bob",
            "ALTER TABLE t ADD COLUMN c text",
        ),
        (
            "runs-new-function",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$; SELECT f()",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$; SELECT g()",
        ),
        (
            "drop-column",
            "ALTER TABLE t DROP COLUMN a",
            "ALTER TABLE t ADD COLUMN a text",
        ),
        ("drop-table", "DROP TABLE t", "DROP VIEW v"),
        ("drop-type-cascade", "DROP TYPE s CASCADE", "DROP TYPE s"),
        ("truncate", "TRUNCATE t", "DELETE FROM t WHERE id = 1"),
        ("delete-rows", "DELETE FROM t WHERE id = 1", "TRUNCATE t"),
        (
            "update-rows",
            "UPDATE t SET a = 1",
            "INSERT INTO t (a) VALUES (1)",
        ),
        (
            "index-without-concurrently",
            "CREATE INDEX i ON t (a)",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
        ),
        (
            "constraint-without-not-valid",
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES users (id)",
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES users (id) NOT VALID",
        ),
        (
            "table-rewrite",
            "ALTER TABLE t ALTER COLUMN a TYPE bigint",
            "CREATE TABLE t2 (a int); ALTER TABLE t2 ALTER COLUMN a TYPE bigint",
        ),
        (
            "set-not-null-scan",
            "ALTER TABLE t ALTER COLUMN a SET NOT NULL",
            "CREATE TABLE t2 (a int); ALTER TABLE t2 ALTER COLUMN a SET NOT NULL",
        ),
        (
            "missing-lock-timeout",
            "ALTER TABLE t ADD COLUMN c text",
            "SET lock_timeout = '2s'; ALTER TABLE t ADD COLUMN c text",
        ),
    ];

    fn names(sql: &str) -> Vec<&'static str> {
        classify(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .flat_map(|s| s.rules.into_iter().chain(s.warnings))
            .collect()
    }

    #[test]
    fn every_rule_has_a_positive_and_a_negative_case() {
        for rule in RULES {
            let (_, yes, no) = CASES
                .iter()
                .find(|(name, _, _)| *name == rule.name)
                .unwrap_or_else(|| panic!("no case for rule `{}`", rule.name));
            assert!(
                names(yes).contains(&rule.name),
                "`{yes}` should trigger `{}`: {:?}",
                rule.name,
                names(yes)
            );
            assert!(
                !names(no).contains(&rule.name),
                "`{no}` should not trigger `{}`: {:?}",
                rule.name,
                names(no)
            );
        }
    }
}
