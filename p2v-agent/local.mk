# p2v-agent/: the capture client (remote streaming to p2v-server, local --output mode,
# --facts, --plan). Built as p2v-agent/p2v-agent: a top-level "p2v-agent" program would
# collide with the build tree's p2v-agent/ object folder. Installed as bin/p2v-agent.
bin_PROGRAMS += p2v-agent/p2v-agent
p2v_agent_p2v_agent_SOURCES = \
	p2v-agent/agent.h \
	p2v-agent/adapt.h \
	p2v-agent/adapt.c \
	p2v-agent/main.c \
	p2v-agent/facts.c \
	p2v-agent/events.c \
	p2v-agent/local.c \
	p2v-agent/remote.c \
	p2v-agent/freeze.h \
	p2v-agent/freeze.c \
	p2v-agent/live.c \
	p2v-agent/snap.h \
	p2v-agent/snap.c
p2v_agent_p2v_agent_LDADD = $(IMAGER_LIBS)
dist_man_MANS += docs/man/p2v-agent.1

AGENT_TESTS = tests/integration/agent-local.sh tests/integration/agent-adapt.sh
TESTS += $(AGENT_TESTS)
EXTRA_DIST += $(AGENT_TESTS)
include p2v-agent/mkmedia.mk
include p2v-agent/tests-freeze.mk
include p2v-agent/tests-live.mk
