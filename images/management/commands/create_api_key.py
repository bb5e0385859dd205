from django.core.management.base import BaseCommand, CommandError, CommandParser

from images import apikeys
from images.keystore import KeyExists


class Command(BaseCommand):
    help = "Create an API key. The key is printed once, as the last line; only its hash is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="who or what uses the key; recorded as uploaded_by")
        parser.add_argument(
            "--scopes", default="read", help="comma-separated: read, write, admin (default read)"
        )

    def handle(self, *args, name: str, scopes: str, **options) -> None:
        if not name.strip():  # the name is the caller's identity in uploaded_by and the logs
            raise CommandError("the name must not be empty", returncode=2)
        try:
            key = apikeys.create_key(name, apikeys.parse_scopes(scopes))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except KeyExists as exc:
            raise CommandError(f"a key named {name!r} exists already") from exc
        self.stderr.write(f"Created API key {name!r} with scopes {scopes}. Store it now: it is not kept.")
        self.stdout.write(key)
