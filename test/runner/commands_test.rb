# frozen_string_literal: true

require_relative 'test_helper'

class CommandsTest < Minitest::Test
  include RunnerTest

  ENV_PROPERTIES = { 'project' => { 'opschain' => { 'env' => { 'TOKEN' => 'from-context', 'COUNT' => 2 } } } }.freeze

  def test_opschain_exec_reads_the_zip_the_build_mounts_in_the_repo_folder
    write_context(properties: ENV_PROPERTIES, folder: '.opschain', zip: true)
    result = run_command('opschain-exec', 'sh', '-c', 'echo "$TOKEN $COUNT"')
    assert result.success?, result.stderr
    assert_equal "from-context 2\n", result.stdout
  end

  def test_opschain_exec_context_option_takes_a_zip_anywhere
    File.binwrite(File.join(@repo, 'elsewhere.zip'), zip_bytes('step_context.json' => JSON.generate('properties' => ENV_PROPERTIES)))
    %w[--context=elsewhere.zip --context].each do |option|
      args = option.include?('=') ? [option] : [option, 'elsewhere.zip']
      result = run_command('opschain-exec', *args, 'sh', '-c', 'echo "$TOKEN"')
      assert result.success?, result.stderr
      assert_equal "from-context\n", result.stdout
    end
    missing = run_command('opschain-exec', '--context', 'nope.zip', 'true')
    refute missing.success?
    assert_match(/nope.zip: no such file/, missing.stderr)
  end

  def test_opschain_exec_without_a_context_runs_the_command_unchanged
    result = run_command('opschain-exec', 'sh', '-c', 'echo "${TOKEN:-unset}"')
    assert result.success?, result.stderr
    assert_equal "unset\n", result.stdout
    assert_equal 127, run_command('opschain-exec', 'no-such-command-here').exitstatus
  end

  def test_a_gemfile_asking_for_gems_the_image_lacks_fails_naming_them
    write_context(properties: {})
    write('Gemfile', "source 'https://rubygems.org'\ngem 'rake'\ngem 'no-such-gem-one'\ngem 'no-such-gem-two', '~> 2.0'\n")
    write('actions.rb', "action(:x) { puts 'ran' }\n")
    result = action('x')
    assert_equal 1, result.exitstatus
    assert_match(/asks for gems this runner image does not have: no-such-gem-one \(>= 0\), no-such-gem-two \(~> 2\.0\)/, result.stderr)
    refute_match(/rake \(/, result.stderr)
    refute_includes result.stdout, 'ran'
  end

  def test_a_gemfile_of_installed_gems_works_offline
    write_context(properties: {})
    write('Gemfile', "source 'https://rubygems.org'\ngem 'hashie'\ngem 'rake'\n")
    write('actions.rb', "action(:x) { puts defined?(Bundler) ? 'bundled' : 'plain' }\n")
    result = action('x', env: { 'BUNDLE_USER_HOME' => @repo })
    assert result.success?, result.stderr
    assert_equal "bundled\n", result.stdout
  end

  def test_bundle_and_lint_names_missing_gems_and_lints_the_actions
    write('Gemfile', "source 'https://rubygems.org'\ngem 'rake'\ngem 'no-such-gem-three'\n")
    write('actions.rb', "action(:x) {}\n")
    path = { 'PATH' => "#{BIN}:#{ENV.fetch('PATH')}" }
    missing = run_command('bundle_and_lint.sh', env: path)
    assert_equal 1, missing.exitstatus
    assert_match(/asks for gems this runner image does not have: no-such-gem-three \(>= 0\)/, missing.stderr)
    write('Gemfile', "source 'https://rubygems.org'\ngem 'rake'\n")
    linted = run_command('bundle_and_lint.sh', env: path.merge('BUNDLE_USER_HOME' => @repo))
    assert linted.success?, linted.stderr
    assert_match(/opschain-lint: .*actions.rb defines 1 actions/, linted.stdout)
    write('actions.rb', "action a: ['missing'] do end\n")
    refute run_command('bundle_and_lint.sh', env: path.merge('BUNDLE_USER_HOME' => @repo)).success?
    assert run_command('bundle_and_lint.sh', 'false', env: path.merge('BUNDLE_USER_HOME' => @repo)).success?
  end

  def test_a_file_property_that_cannot_be_written_fails_the_step_with_a_result
    write_context(properties: { 'project' => { 'opschain' => { 'files' => { '/proc/not-writable/x' => { 'content' => 'x' } } } } })
    write('actions.rb', "action(:x) { puts 'ran' }\n")
    result = action('x')
    assert_equal 1, result.exitstatus
    assert_match(/not-writable/, result.stderr)
    assert_equal({}, diffs)
  end

  def test_opschain_lint_reports_unknown_prerequisites
    write('actions.rb', "action a: ['missing'] do end\naction(:b) {}\n")
    result = run_command('opschain-lint')
    refute result.success?
    assert_match(/a: prerequisite missing is not an action/, result.stderr)
    write('actions.rb', "action a: ['b'] do end\naction(:b) {}\n")
    assert run_command('opschain-lint').success?
  end
end
