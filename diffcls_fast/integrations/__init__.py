"""Adapters to other engines (Ray Data); each imports its engine lazily."""
