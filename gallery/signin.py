"""Sign-in lockout: django-axes, with a reset on success that clears only the account signed in to."""

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username
from axes.models import AccessAttempt


class SigninHandler(AxesDatabaseHandler):
    """Axes' database handler, but a success forgets only that account's failures.

    Axes' own reset deletes every failure from the address too, so a designer could guess a
    colleague's password nine times, sign in to their own account, and start again unlocked.
    """

    def reset_user_attempts(self, request, credentials=None) -> int:
        username = get_client_username(request, credentials)
        return AccessAttempt.objects.filter(username=username).delete()[0]
