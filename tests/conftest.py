pytest_plugins = ["mesh.testing", "services.http.testing"]
