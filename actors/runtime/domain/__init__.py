"""One guest domain's actor: its mailbox (:mod:`.mailbox`) and the flood gate in front of it (:mod:`.floodgate`),
the serving loop that runs its handlers one at a time (:mod:`.serving`, :mod:`.calls`), its watches as
registered with the daemon (:mod:`.registrations`), its supervisor (:mod:`.supervisor`), what a handler gets
(:mod:`.context`), messages (:mod:`.messages`), and what it needs of its runtime (:mod:`.owner`)."""
