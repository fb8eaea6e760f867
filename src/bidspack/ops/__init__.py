"""Operations: each builds a plan, then applies it through :mod:`bidspack.txn`,
yielding :class:`bidspack.records.Record` objects."""
