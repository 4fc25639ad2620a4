"""The lbdriver's adapters: appliance drivers and clients, and the loops that execute
the core's decisions against appliances and the bus."""
