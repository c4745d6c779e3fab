# The studio's image: web (this CMD), worker, beat and migrate (their commands are in docker-compose.yml).
# Only requirements.txt is installed: process managers and test tools stay in requirements-dev.txt.
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DJANGO_DEBUG=false DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --no-input \
    && useradd --create-home studio && mkdir -p var && chown -R studio var
USER studio
EXPOSE 8000
# Threaded workers keep telling gunicorn they are alive while a ZIP streams for minutes; a sync worker
# would be killed after --timeout (30 s) mid-download.
CMD ["gunicorn", "qwenstudio.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--worker-class", "gthread", "--threads", "4", "--access-logfile", "-"]
