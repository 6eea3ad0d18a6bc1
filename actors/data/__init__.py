"""A participant's private data, loaded where it runs: sources, tables, user loaders, partitions, synthetic data, a site's preprocessing."""
