"""usync streams: the event contract, the pure fold and decision core, and the Faust app."""
