import txwatch

api = txwatch.Api()  # the local database; txwatch.Api("http://127.0.0.1:8642") reads a daemon
runs = api.runs(where="config.lr >= 1e-3")
print(runs[["name", "status", "steps", "last_loss", "config.lr"]])
curves = api.history("readme-example", ["loss", "val_loss"])  # one row per step
print(curves.tail())
print(api.diagnoses("readme-example"))
