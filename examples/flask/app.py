import os
import socket

from flask import Flask

app = Flask(__name__)
hits = 0


@app.get("/")
def index():
    global hits
    hits += 1
    return {"message": "hello from Flask in a Cocoon MicroVM", "host": socket.gethostname(), "pid": os.getpid(), "hits": hits}
