pytest_plugins = ["mesh.testing", "tests.mail_support"]
