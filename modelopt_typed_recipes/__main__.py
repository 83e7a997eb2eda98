from modelopt_typed_recipes.cli import command_line

command_line()
