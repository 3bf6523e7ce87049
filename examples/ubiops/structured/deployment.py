"""A structured deployment: takes `x: int`, gives `x: int` (doubled)."""


class Deployment:
    def __init__(self, base_directory, context):
        # Runs once per instance: load a model here.
        print(f"loading from {base_directory}")

    def request(self, data):
        return {"x": data["x"] * 2}
