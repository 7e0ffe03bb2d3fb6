pytest_plugins = ["ktasks.testing"]
