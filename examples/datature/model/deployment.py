"""The model the job runs on each item: takes `x: int`, gives `x: int` (doubled)."""


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        return {"x": data["x"] * 2}
