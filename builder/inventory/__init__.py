"""Reading the inventory: schema, cluster/host config, base catalog, layers."""
