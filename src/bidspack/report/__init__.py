"""Report writers: tables (CSV, Parquet), JSON summaries and self-contained HTML."""
