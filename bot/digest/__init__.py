"""Follows and digests: channels follow Zenn authors, topics, publications or the trend; at the
channel's time one digest message lists the new items across its follows, ranked by likes, each
summarised in two lines, with a thread under it to discuss them.

  targets.py   what can be followed, from a URL or a name
  schedule.py  when a channel's digest is due (daily / weekly, a time, a time zone)
  feeds.py     the followed feeds, polled with conditional requests at most every 15 min
  builder.py   the digest of a channel for a period: new items, de-duplicated, ranked, summarised
  runner.py    claims each due digest once in the store, builds it, posts it, seeds its thread
  commands.py  follow / unfollow / following, platform-neutral (the adapters check permissions)
"""
