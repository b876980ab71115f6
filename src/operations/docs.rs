//! Reference documentation generated from the catalog: Markdown for people, JSON Schema per operation.
