import dagster as dg

# One dynamic partition per connected account, registered from the accounts file.
accounts_partitions = dg.DynamicPartitionsDefinition(name="accounts")
