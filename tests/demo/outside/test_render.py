"""Spec: the outside check's renderer draws each thing in its own colour where it says, on its paper, at its size."""

import numpy as np
import pytest

from cobra_app.demo.outside.render import NAMED, SHAPE_NAMES, Picture, Thing, _sdf, draw, random_picture


@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_each_shape_contains_its_centre_and_stays_within_its_radius(shape):
    assert _sdf(shape, np.array(0.0), np.array(0.0)) < 0
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    assert (_sdf(shape, 1.01 * np.cos(angles), 1.01 * np.sin(angles)) > 0).all()


def test_square_and_diamond_are_a_quarter_turn_of_each_other_apart():
    u, v = np.meshgrid(np.linspace(-1, 1, 41), np.linspace(-1, 1, 41))
    turned = np.pi / 4
    square_turned = _sdf("square", u * np.cos(turned) - v * np.sin(turned), u * np.sin(turned) + v * np.cos(turned))
    assert ((square_turned < 0) == (_sdf("diamond", u, v) < 0)).mean() > 0.97


def test_pictures_show_things_in_their_colours_on_their_paper():
    rng = np.random.default_rng(0)
    for _ in range(30):
        picture = random_picture(rng)
        pixels = np.asarray(draw(picture), np.int32)
        assert pixels.shape == (picture.side, picture.side, 3) and 64 <= picture.side <= 224
        for t in picture.things:
            assert 0.07 <= t.radius <= 0.19 and t.rgb in NAMED[t.colour]
            centre = pixels[int(t.cy * picture.side), int(t.cx * picture.side)]
            assert np.abs(centre - t.rgb).max() <= 10, (t, centre)


def test_outlines_are_dark_rings_around_each_thing():
    thing = Thing("circle", "yellow", 0.5, 0.5, 0.3, 0.0, (255, 255, 0))
    plain, outlined = (np.asarray(draw(Picture((thing,), 100, (255, 255, 255), None, width, 0)), np.int32)
                       for width in (0.0, 2.0))
    edge = outlined[50, 20]  # on the circle's rim, 30 px left of the centre
    assert edge.max() < 120 and plain[50, 20].max() > 200 and np.abs(outlined[50, 50] - (255, 255, 0)).max() <= 10
