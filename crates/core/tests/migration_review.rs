#![allow(clippy::unwrap_used)]
//! Adversarial review of the migration classifier: statements it judges less dangerous
//! than PostgreSQL makes them. Every test here fails on the reviewed code and should pass
//! once the classifier is right. The PostgreSQL behaviour cited was checked on a
//! PostgreSQL 15 server.

use rampart_core::migrations::{Class, StatementReport, classify, worst};

fn all(sql: &str) -> Vec<StatementReport> {
    classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn one(sql: &str) -> StatementReport {
    let mut r = all(sql);
    assert_eq!(r.len(), 1, "{sql}: {r:?}");
    r.remove(0)
}

/// The statement is either refused (a parse error: the check fails closed, exit 2) or
/// classified at least as bad as `class`.
fn refused_or_at_least(sql: &str, class: Class) {
    if let Ok(r) = classify(sql) {
        assert!(worst(&r) >= class, "{sql}: {r:?}");
    }
}

// 1. Fail-open: `Parser::parse_statement` parses one statement and the rest of the
// chunk is never looked at. When sqlparser does not know a clause PostgreSQL accepts,
// it stops there and every later ALTER TABLE operation is silently dropped from the
// verdict. PostgreSQL 15 runs both of these completely: `legacy_flag` is gone.
#[test]
fn operations_after_a_clause_the_parser_does_not_know_are_not_ignored() {
    for sql in [
        // COMPRESSION is a PostgreSQL 14+ column option.
        "ALTER TABLE orders ADD COLUMN note text COMPRESSION pglz, DROP COLUMN legacy_flag",
        // USING INDEX TABLESPACE is an index parameter of UNIQUE / PRIMARY KEY.
        "ALTER TABLE orders ADD CONSTRAINT u UNIQUE (email) USING INDEX TABLESPACE pg_default, DROP COLUMN legacy_flag",
        "ALTER TABLE orders ADD CONSTRAINT u UNIQUE (email) WITH (fillfactor = 70), DROP COLUMN legacy_flag",
    ] {
        refused_or_at_least(sql, Class::Irreversible);
    }
}

// 2. A data-modifying CTE is a DELETE/UPDATE wearing a SELECT or INSERT: the classic
// "move old rows to an archive table" migration deletes them from the table the old
// code reads. Today it is `no-schema-change`.
#[test]
fn a_delete_or_update_inside_a_with_clause_is_irreversible() {
    for sql in [
        "WITH d AS (DELETE FROM orders WHERE created_at < '2020-01-01' RETURNING *) INSERT INTO orders_archive SELECT * FROM d",
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
        "WITH u AS (UPDATE orders SET status = 'archived' RETURNING id) SELECT count(*) FROM u",
    ] {
        assert_eq!(one(sql).class, Class::Irreversible, "{sql}: {:?}", one(sql));
    }
}

// 3. INSERT ... ON CONFLICT ... DO UPDATE overwrites the existing row's values exactly
// like an UPDATE (checked: the row's old value is gone). Only DO NOTHING is a plain
// insert.
#[test]
fn an_upsert_that_updates_existing_rows_is_irreversible() {
    for sql in [
        "INSERT INTO orders (id, status) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status",
        "INSERT INTO orders (id) VALUES (1) ON CONFLICT ON CONSTRAINT orders_pkey DO UPDATE SET total = 0",
    ] {
        assert_eq!(one(sql).class, Class::Irreversible, "{sql}: {:?}", one(sql));
    }
}

// 4. SET DEFAULT NULL is DROP DEFAULT by another name: old inserts that omit the
// column now store NULL, or fail when it is NOT NULL (checked: "null value in column
// \"status\" ... violates not-null constraint"). DROP DEFAULT is `contract`.
#[test]
fn setting_a_default_to_null_is_contract_like_drop_default() {
    let r = one("ALTER TABLE orders ALTER COLUMN status SET DEFAULT NULL");
    assert_eq!(r.class, Class::Contract, "{r:?}");
}

// 5. ADD PRIMARY KEY forces its columns NOT NULL (PostgreSQL docs, and checked: `\d`
// shows `not null` afterwards and an old insert without the column fails). That is the
// `set-not-null` contract, hidden in an `add-constraint`.
#[test]
fn adding_a_primary_key_is_contract_because_it_sets_not_null() {
    for sql in [
        "ALTER TABLE orders ADD PRIMARY KEY (id)",
        "ALTER TABLE orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id)",
    ] {
        assert_eq!(one(sql).class, Class::Contract, "{sql}: {:?}", one(sql));
    }
}

// 6. CREATE OR REPLACE FUNCTION replaces a function the old code may call (or a trigger
// function that runs on the old code's writes: a new body can RAISE on them). The
// `add-view` rule's reason, "new objects old code does not use", does not hold for OR
// REPLACE; it must be reviewed like any unrecognised change.
#[test]
fn create_or_replace_function_is_not_expand() {
    let r = one(
        "CREATE OR REPLACE FUNCTION orders_check() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.region IS NULL THEN RAISE EXCEPTION 'region required'; END IF; RETURN NEW; END $$",
    );
    assert_eq!(r.class, Class::Contract, "{r:?}");
}

// 7. CREATE TABLE IF NOT EXISTS on a table that already exists is a no-op (checked:
// "relation already exists, skipping"), so the table is not new and not empty; the
// classifier still treats it as created in this file and lets a NOT NULL column without
// a default through as `expand`.
#[test]
fn create_table_if_not_exists_does_not_make_an_existing_table_new() {
    let r = all(
        "CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY);\nALTER TABLE orders ADD COLUMN region text NOT NULL;",
    );
    assert_eq!(r[1].class, Class::Contract, "{r:?}");
}

// 8. Quoted identifiers are case sensitive in PostgreSQL: "Orders" and "orders" are
// two tables. The classifier lowercases quoted names too, so creating "Orders" makes the
// existing orders table look new.
#[test]
fn a_quoted_table_name_keeps_its_case_when_deciding_a_table_is_new() {
    let r =
        all("CREATE TABLE \"Orders\" (id int);\nALTER TABLE \"orders\" ADD COLUMN n int NOT NULL;");
    assert_eq!(r[1].class, Class::Contract, "{r:?}");
}

// 9. DROP TYPE ... CASCADE drops every table column of that type (checked: "drop
// cascades to column mood of table m"): data is destroyed, not just a type removed.
#[test]
fn drop_type_cascade_is_irreversible() {
    let r = one("DROP TYPE order_status CASCADE");
    assert_eq!(r.class, Class::Irreversible, "{r:?}");
}

// 10. A reviewer's annotation written at the end of the line of the statement it is
// about (`UPDATE ...; -- rampart:safe ...`) is taken as the annotation of the NEXT
// statement: here the DELETE is marked safe with the backfill's reason.
#[test]
fn a_trailing_annotation_does_not_mark_the_next_statement_safe() {
    let r = all(
        "UPDATE orders SET amount_cents = total * 100; -- rampart:safe backfill of the new column, reviewed by dana\nDELETE FROM orders;\n",
    );
    assert_eq!(r[1].class, Class::Irreversible, "{r:?}");
    assert_eq!(r[1].safe, None, "{r:?}");
}

// 11. The docs say the annotation goes "on the line just above" the statement, but any
// comment since the previous `;` counts, however far above: an annotation left behind
// when its statement was commented out (or moved) silently approves the next one.
#[test]
fn an_annotation_separated_from_the_statement_by_a_blank_line_does_not_apply() {
    let sql = "SET lock_timeout = '2s';\n-- rampart:safe backfill of amount_cents, reviewed by dana\n-- UPDATE orders SET amount_cents = total * 100;  (moved to 043)\n\nDELETE FROM orders WHERE created_at < '2020-01-01';\n";
    let r = all(sql);
    assert_eq!(r[1].class, Class::Irreversible, "{r:?}");
}

// 12. The annotation is matched as a bare prefix, so any comment that starts with
// `rampart:safe` followed by more letters (`rampart:safeguard`, `rampart:safety`) is an
// approval, even one that says the opposite.
#[test]
fn only_the_whole_word_rampart_safe_is_an_annotation() {
    let r =
        all("-- rampart:safeguard: this deletes everything, do NOT merge\nDELETE FROM orders;\n");
    assert_eq!(r[0].class, Class::Irreversible, "{r:?}");
}

// 13. `lock_timeout = 0` (and DEFAULT, which is 0) DISABLES the timeout (PostgreSQL
// docs: "A value of zero (the default) disables the timeout"), yet any SET naming
// lock_timeout silences `missing-lock-timeout`.
#[test]
fn a_zero_or_default_lock_timeout_does_not_count_as_a_lock_timeout() {
    for set in [
        "SET lock_timeout = 0",
        "SET lock_timeout = '0'",
        "SET lock_timeout TO DEFAULT",
    ] {
        let r = all(&format!("{set};\nALTER TABLE orders ADD COLUMN c text;"));
        assert!(
            r[1].warnings.contains(&"missing-lock-timeout"),
            "{set}: {r:?}"
        );
    }
}

// 14. A parse error's line is wrong after a `--` comment inside the statement: the
// statement is re-assembled from tokens and a line comment's text is written with an
// extra newline (`writeln!` on a comment that already ends in '\n'), so each such
// comment shifts the reported line by one. Here the error is on line 2, reported as 3.
#[test]
fn a_parse_error_after_a_line_comment_names_the_right_line() {
    let e = classify("ALTER TABLE orders -- add the column\n  ADD COLUMN 5 int;\n").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    let e = classify("SELECT 1;\nALTER TABLE orders -- a\n  -- b\n  -- c\n  ADD COLUMN 5 int;\n")
        .unwrap_err();
    assert_eq!(e.line, 5, "{e}");
}
