"""A plain deployment: takes text, gives it back in capitals."""


class Deployment:
    def __init__(self, base_directory, context):
        pass

    def request(self, data):
        print(f"got {len(data)} characters")  # kept with the request: read it with logs_list
        return data.upper()
