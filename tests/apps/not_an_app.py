app = {"not": "an app"}
