"""The Celery application. Importing it never loads TensorFlow (Flower and producers may import it)."""
from celery import Celery

app = Celery("featurevis", include=["worker.tasks", "worker.atlas_tasks"])
app.config_from_object("featurevis.celeryconfig")
