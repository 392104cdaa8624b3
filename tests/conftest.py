pytest_plugins = ["mesh.testing"]
