//! The migrations compiled into the binary: the files of `migrations/`, in version order, so `waly` needs no
//! files at run time. Adding a migration is adding a file there and a line here.

use super::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "schema",
        sql: include_str!("../../migrations/0001_schema.sql"),
        requires_superuser: false,
    },
    Migration {
        version: 2,
        name: "capture",
        sql: include_str!("../../migrations/0002_capture.sql"),
        requires_superuser: false,
    },
    Migration {
        version: 3,
        name: "ddl_capture",
        sql: include_str!("../../migrations/0003_ddl_capture.sql"),
        // Creates event triggers.
        requires_superuser: true,
    },
    Migration {
        version: 4,
        name: "sequences",
        sql: include_str!("../../migrations/0004_sequences.sql"),
        // take_capture() becomes SECURITY DEFINER to read every application sequence.
        requires_superuser: true,
    },
    Migration {
        version: 5,
        name: "owned_sequences",
        sql: include_str!("../../migrations/0005_owned_sequences.sql"),
        // Replaces event trigger functions and the SECURITY DEFINER take_capture().
        requires_superuser: true,
    },
    Migration {
        version: 6,
        name: "capture_buffer",
        sql: include_str!("../../migrations/0006_capture_buffer.sql"),
        // Replaces event trigger functions and recreates every capture trigger.
        requires_superuser: true,
    },
    Migration {
        version: 7,
        name: "capture_row_one_expression",
        sql: include_str!("../../migrations/0007_capture_row_one_expression.sql"),
        // Disables and enables the event triggers while it replaces the capture trigger's function.
        requires_superuser: true,
    },
    Migration {
        version: 8,
        name: "direct_commit",
        sql: include_str!("../../migrations/0008_direct_commit.sql"),
        requires_superuser: false,
    },
    Migration {
        version: 9,
        name: "text_images",
        sql: include_str!("../../migrations/0009_text_images.sql"),
        // Disables and enables the event triggers while it replaces the capture functions.
        requires_superuser: true,
    },
    Migration {
        version: 10,
        name: "ddl_values",
        sql: include_str!("../../migrations/0010_ddl_values.sql"),
        // Creates event triggers.
        requires_superuser: true,
    },
    Migration {
        version: 11,
        name: "standalone_sequences",
        sql: include_str!("../../migrations/0011_standalone_sequences.sql"),
        // Disables and enables the event triggers while it refreshes every table's sequences.
        requires_superuser: true,
    },
    Migration {
        version: 12,
        name: "no_writes_after_capture",
        sql: include_str!("../../migrations/0012_no_writes_after_capture.sql"),
        // Disables and enables the event triggers while it replaces the capture trigger's function.
        requires_superuser: true,
    },
];
