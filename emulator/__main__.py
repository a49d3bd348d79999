"""`python -m emulator`: the emulator as its own HTTPS server, a stand-in Entra ID and Graph for staging.

The portal points at it with ENTRA_AUTHORITY=URL/organizations, GRAPH_ENDPOINT=URL/graph/v1.0 and
ENTRA_CA_BUNDLE (the CA that signed --cert); see the README's "Staging with the emulator".
"""
from __future__ import annotations

import ssl

import click
from werkzeug.serving import make_server

from . import Emulator


@click.command(context_settings={"auto_envvar_prefix": "ENTRA_EMULATOR"})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8443, show_default=True, type=int)
@click.option("--cert", required=True, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate (chain) for HTTPS; it must name the host in --url.")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="PEM private key of --cert.")
@click.option("--url", default=None,
              help="The https URL browsers and the portal use to reach it [default: https://HOST:PORT].")
@click.option("--instance", default="instance/emulator-server", show_default=True,
              type=click.Path(file_okay=False), help="Folder for its signing keys, codes and consents.")
@click.option("--client-id", required=True, help="The portal's ENTRA_CLIENT_ID.")
@click.option("--client-secret", required=True,
              help="The portal's ENTRA_CLIENT_SECRET (or the ENTRA_EMULATOR_CLIENT_SECRET variable).")
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True,
              help="A redirect URI the portal may use; give both https://PORTAL/auth/callback and "
                   "https://PORTAL/auth/admin-consent/callback.")
@click.option("--front-channel-logout-url", default=None,
              help="The app's Front-channel logout URL (https://PORTAL/auth/front-channel-logout): the sign-out "
                   "page loads it in an iframe for each session that signed in to the portal.")
def main(host: str, port: int, cert: str, key: str, url: str | None, instance: str, client_id: str,
         client_secret: str, redirect_uris: tuple[str, ...], front_channel_logout_url: str | None) -> None:
    """Serve the Entra ID emulator (sign-in pages, v2 endpoints and Graph) over HTTPS."""
    url = (url or f"https://{host}:{port}").rstrip("/")
    if not url.startswith("https://"):
        raise click.UsageError("--url must be an https URL: MSAL and the portal accept nothing else.")
    emu = Emulator(instance, browser_url=url, login_url=url, graph_url=url + "/graph",
                   clients={client_id: {"secret": client_secret, "redirect_uris": list(redirect_uris),
                                        "name": "Customer Portal (staging)",
                                        "front_channel_logout_url": front_channel_logout_url}})
    try:
        server = make_server(host, port, emu.wsgi, threaded=True, ssl_context=(cert, key))
    except ssl.SSLError as e:
        raise click.ClickException(f"--cert/--key could not be loaded as a PEM certificate and its key: {e}") from None
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}") from None
    click.echo(f"Entra ID emulator at {url}: ENTRA_AUTHORITY={url}/organizations GRAPH_ENDPOINT={url}/graph/v1.0",
               err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
