"""The portal: sign-in, public catalogue, desktops and jobs; the token issuer on one machine.

The app factory is `portal.app.create_app`; this package imports nothing, so that
`portal.client` (what workloads use) stays light."""
