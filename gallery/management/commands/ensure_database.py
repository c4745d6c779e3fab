import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql


class Command(BaseCommand):
    help = "Create the PostgreSQL database named by DATABASE_URL if it does not exist yet."

    def handle(self, *args, **options):
        db = settings.DATABASES["default"]
        params = {"host": db.get("HOST") or None, "port": db.get("PORT") or None, "user": db.get("USER") or None,
                  "password": db.get("PASSWORD") or None, "dbname": "postgres", "autocommit": True}
        try:
            with psycopg.connect(**{k: v for k, v in params.items() if v is not None}) as connection:
                exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
                if exists:
                    return
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
        except psycopg.Error as error:
            raise CommandError(f"Could not reach PostgreSQL to create {db['NAME']}: {error}") from None
        self.stdout.write(f"Created database {db['NAME']}")
